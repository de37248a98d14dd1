"""``smec export``: a training run -> one model folder that Sentence-Transformers, transformers, vLLM and TEI serve.

Layout (what each engine reads is recorded, from their source, in the project's serving notes)::

    config.json                  the base encoder's own config (its model_type and architectures) plus
                                 matryoshka_dimensions, is_matryoshka and, when SMECModel can reproduce the
                                 pipeline, auto_map {"AutoModel": "modeling_smec.SMECModel"} (no AutoConfig entry)
    model.safetensors, tokenizer the encoder's weights (its own key names) and tokenizer, at the root
    modules.json                 the base pipeline unchanged, then the SMEC head as built-in Dense layers (one for a
                                 linear chain, two for a residual-MLP stage 1), then Normalize where the base
                                 normalised; legacy type names sentence_transformers.models.*
    sentence_bert_config.json    with max_seq_length
    1_Pooling/config.json        in the legacy pooling_mode_*_tokens form
    <n>_Dense/                   the SMEC head: no bias, identity activation, weight key linear.weight; a residual-MLP
    [<n+1>_Dense/]               stage 1 gives <n>_Dense (D -> h + 2D, ReLU) then <n+1>_Dense (h + 2D -> D, identity)
    modeling_smec.py             SMECModel (only with auto_map)
    smec_run.json, README.md     the run record and the model card; no text file names a local path

Why: vLLM, TEI and SGLang read config, weights and tokenizer from the root, apply pooling -> projection -> cut to
``d`` -> normalise whatever ``modules.json`` says, and accept ``dimensions=`` only with the Matryoshka keys. A
bias-free head is positively homogeneous, so that order gives Sentence-Transformers' directions exactly; TEI parses
``modules.json`` only with the legacy type names, the pooling file only in the legacy form and needs
``max_seq_length``. Sentence-Transformers 3 to 6.2 load all of it with no custom code. A residual-MLP head is still
bias-free, hence positively homogeneous (vLLM applies every Dense with its activation); TEI's Dense knows only Tanh
and Identity, so it cannot load the ReLU layer.
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Sequence

from sentence_transformers import SentenceTransformer, SentenceTransformerModelCardData
from sentence_transformers.base.modules import Dense, Normalize, Transformer
from sentence_transformers.sentence_transformer.modules import Pooling

from ..core import layout
from ..core.io import atomic_write_json
from ..smec.chain import SMECChain
from .base_model import load_base_model
from .licence import base_model_license
from .model_card import build_model_card
from .modeling_smec import LEGACY_POOLING_KEYS, UnsupportedPipeline, read_pipeline
from .scrub import scrub_folder, scrub_value
from .st_module import SMECModule

logger = logging.getLogger(__name__)

REQUIRED_RUN_KEYS = ("base_model", "dims", "dataset", "config", "results")
LEGACY_TYPES = {"Transformer", "Pooling", "Dense", "Normalize"}   # sentence_transformers.models.<name>: what TEI parses
CODE_FILE = "modeling_smec.py"
AUTO_MAP = {"AutoModel": "modeling_smec.SMECModel"}   # a local folder's form; `smec push` names the repo's code


def load_run(run_dir: str | Path) -> tuple[dict, SMECChain]:
    """Read ``smec_run.json`` and the trained chain, and check that they describe the same dimension path."""
    run_dir = Path(run_dir)
    run_file = run_dir / layout.RUN_FILE
    if not run_file.is_file():
        hint = " (training has not finished: rerun `smec train` into it)" if (run_dir / layout.CHECKPOINT_DIR).is_dir() else ""
        raise FileNotFoundError(f"{run_file} not found: not a finished `smec train` run folder{hint}")
    run = json.loads(run_file.read_text())
    layout.check_format(run, layout.RUN_FORMAT, str(run_file))
    missing = [key for key in REQUIRED_RUN_KEYS if key not in run]
    if missing:
        raise ValueError(f"{run_file} lacks {missing}")
    chain = SMECChain.load(run_dir / layout.HEAD_DIR).eval()
    if chain.dims != [int(d) for d in run["dims"]]:
        raise ValueError(f"{run_file} says dims {run['dims']} but {run_dir / layout.HEAD_DIR} holds a chain for "
                         f"{chain.dims}")
    return run, chain


def check_base_matches(base: SentenceTransformer, base_name: str, chain: SMECChain, run: dict) -> None:
    """The encoder must produce the vectors the head was trained on: same size, and the same encoder where the
    embedding cache recorded one (a local folder's content fingerprint)."""
    from ..data.cache import encoder_identity   # deferred: data loading is not needed for the size check

    dim = base.get_embedding_dimension()
    if dim != chain.dims[0]:
        raise ValueError(f"--base-model {base_name} gives {dim}-d embeddings but the head was trained on "
                         f"{chain.dims[0]}-d ones: pass the encoder the run was trained with")
    recorded = (run.get("embedding_cache") or {}).get("encoder")
    if isinstance(recorded, dict) and recorded.get("kind") == "local" and Path(base_name).is_dir():
        if encoder_identity(base_name)["fingerprint"] != recorded.get("fingerprint"):
            raise ValueError(f"--base-model {base_name} is not the encoder the run's embeddings came from "
                             f"({recorded.get('name')}); pass that one")


def served_modules(base: SentenceTransformer, head: Sequence[Dense], bias_free: bool = True) -> list:
    """The base pipeline, then the head's ``Dense`` layers, then the base's trailing ``Normalize`` (moved behind
    the head).

    With a bias-free head (linear or ReLU layers: positively homogeneous) ``normalize(head(v))`` has the direction
    of ``head(normalize(v))``, and it is the order the serving engines hard-code. A head with a bias (runs from
    before bias-free heads) keeps the base's order, so that Sentence-Transformers still computes exactly what it
    was trained for.
    """
    if not head or not all(isinstance(layer, Dense) for layer in head):
        raise ValueError(f"head must be a non-empty list of Dense layers, got {head!r}")
    modules = list(base)
    if not isinstance(modules[0], Transformer) or not any(isinstance(m, Pooling) for m in modules):
        raise ValueError(f"--base-model must be a Transformer -> Pooling ... pipeline, got "
                         f"{[type(m).__name__ for m in modules]}")
    move = bias_free and isinstance(modules[-1], Normalize)
    return [*(modules[:-1] if move else modules), *head, *([Normalize()] if move else [])]


def write_served_layout(folder: Path, dims: list[int], max_seq_length: int | None, auto_map: bool) -> None:
    """Rewrite a Sentence-Transformers save into the form every engine reads (see the module docstring); safe to
    run again on a folder it wrote, so a re-saved model keeps the layout."""
    modules = json.loads((folder / "modules.json").read_text())
    for module in modules:
        name = module["type"].rsplit(".", 1)[-1]
        if name in LEGACY_TYPES:
            module["type"] = f"sentence_transformers.models.{name}"
        if name == "Pooling":
            _legacy_pooling(folder / module["path"] / "config.json")
    atomic_write_json(folder / "modules.json", modules)
    tokenizer_config = folder / "tokenizer_config.json"
    if tokenizer_config.exists():   # Sentence-Transformers records how *this* machine loaded it; not for the Hub
        values = json.loads(tokenizer_config.read_text())
        atomic_write_json(tokenizer_config, {k: v for k, v in values.items() if k not in ("is_local", "local_files_only")})
    bert_config_file = folder / "sentence_bert_config.json"
    bert_config = json.loads(bert_config_file.read_text()) if bert_config_file.exists() else {}
    if max_seq_length is not None:
        bert_config["max_seq_length"] = int(max_seq_length)
    atomic_write_json(bert_config_file, bert_config)
    config = json.loads((folder / "config.json").read_text())
    config.pop("_name_or_path", None)
    config.update({"matryoshka_dimensions": sorted(int(d) for d in dims), "is_matryoshka": True})
    if auto_map:   # an encoder with custom code keeps its own auto_map (then auto_map is False)
        config["auto_map"] = dict(AUTO_MAP)
        shutil.copyfile(Path(__file__).with_name(CODE_FILE), folder / CODE_FILE)
    atomic_write_json(folder / "config.json", config)


def _legacy_pooling(file: Path) -> None:
    config = json.loads(file.read_text())
    mode = config.pop("pooling_mode", None)
    modes = {mode} if isinstance(mode, str) else set(mode or [])
    dimension = config.pop("embedding_dimension", config.get("word_embedding_dimension"))
    legacy = {"word_embedding_dimension": dimension,
              **{key: (name in modes) or bool(config.get(key)) for key, name in LEGACY_POOLING_KEYS.items()},
              "include_prompt": config.get("include_prompt", True)}
    atomic_write_json(file, legacy)


def save_with_head(base: SentenceTransformer, chain: SMECChain, output_dir: Path, trust_remote_code: bool = False
                   ) -> tuple[bool, str | None, int]:
    """Save ``base`` with ``chain`` behind it as ``Dense`` layers into ``output_dir`` in the served layout; returns
    ``(SMECModel reproduces it, why not, the head's layer count)``."""
    head = SMECModule.from_chain(chain).to_dense_layers()
    model = SentenceTransformer(
        modules=served_modules(base, head, bias_free=not chain.bias), device="cpu",
        similarity_fn_name=base.similarity_fn_name or "cosine", prompts=base.prompts,
        default_prompt_name=base.default_prompt_name,
        model_card_data=SentenceTransformerModelCardData(local_files_only=True, generate_widget_examples=False),
    )
    model.save(str(output_dir), create_model_card=False)
    reproducible, reason = not trust_remote_code, "the encoder needs trust_remote_code"
    if reproducible:
        try:
            read_pipeline(str(output_dir))
        except UnsupportedPipeline as error:
            reproducible, reason = False, str(error)
    write_served_layout(output_dir, chain.dims, base[0].max_seq_length, auto_map=reproducible)
    return reproducible, None if reproducible else reason, len(head)


def run_paths(run: dict, *extra: str | Path | None) -> list[str]:
    """The local paths a run record names (base model, the encoder its embeddings came from) and ``extra`` ones:
    replaced wherever they appear, relative forms included (see :func:`~smec_hf.hf.scrub.scrub_text`)."""
    encoder = (run.get("embedding_cache") or {}).get("encoder")
    named = [run.get("base_model"), encoder.get("name") if isinstance(encoder, dict) else encoder, *extra]
    return [str(path) for path in named if path]


def publishable_run(run: dict) -> dict:
    """The run record without the exporting machine's paths: local files are named by their base name only."""
    return scrub_value(run, run_paths(run))


def prepare_output_dir(output_dir: Path, overwrite: bool) -> None:
    if output_dir.exists() and any(output_dir.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{output_dir} exists and is not empty; pass --overwrite to replace it")
        shutil.rmtree(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)


def export_model(run_dir: str | Path, output_dir: str | Path, *, base_model: str | None = None,
                 repo_id: str | None = None, base_model_id: str | None = None, dataset_id: str | None = None,
                 license: str | None = None, trust_remote_code: bool = False, overwrite: bool = False) -> Path:
    """Build the served folder for the run in ``run_dir``; returns ``output_dir``.

    ``base_model``: the encoder to package (default: the run's; required for runs on precomputed vectors);
    ``repo_id`` goes into the model card (``smec push`` fills it in otherwise); ``base_model_id`` /
    ``dataset_id``: Hub ids for the card when the run used local folders; ``license``: the model's licence
    (default: the training data's or the base model's, see :func:`~smec_hf.hf.licence.model_license`).
    Nothing is written before the base model and the head are checked against each other; every text file
    written is scrubbed of local paths (:mod:`~smec_hf.hf.scrub`).
    """
    run, chain = load_run(run_dir)
    output_dir = Path(output_dir)
    base_name = base_model or run["base_model"]
    if base_name in ("precomputed", None):
        raise ValueError("the run was trained on precomputed vectors: pass --base-model with the encoder that made them")
    base = load_base_model(base_name, trust_remote_code=trust_remote_code)
    check_base_matches(base, base_name, chain, run)
    if chain.bias:
        logger.warning("the head of %s has a bias (trained before bias-free heads): Sentence-Transformers serves "
                       "it exactly, vLLM/TEI (projection before normalisation) do not; retrain to serve it there",
                       run_dir)
    if not chain.is_linear:
        logger.warning("the head of %s has a residual-MLP stage 1 (two Dense layers, the first with ReLU): "
                       "Sentence-Transformers, SMECModel and vLLM serve it; TEI's Dense supports only Tanh and "
                       "Identity", run_dir)
    prepare_output_dir(output_dir, overwrite)
    reproducible, reason, head_layers = save_with_head(base, chain, output_dir, trust_remote_code)
    base_model_id = base_model_id or run.get("base_model_id")
    run = {**run, "base_model_id": base_model_id, "base_model_license": base_model_license(base_name, base_model_id),
           "prompts": {name: text for name, text in base.prompts.items() if text},
           "served": {"auto_model": reproducible, "why_not": reason,
                      "trust_remote_code": trust_remote_code, "head_bias": chain.bias,
                      "head_layers": head_layers, "stage1_head": chain.stage1}}
    atomic_write_json(output_dir / layout.RUN_FILE, run)
    card = build_model_card(run, repo_id=repo_id, base_model_id=base_model_id, dataset_id=dataset_id,
                            license=license)
    card.save(output_dir / "README.md")
    scrub_folder(output_dir, run_paths(run, base_name, run_dir, output_dir))
    logger.info("exported %s to %s", run_dir, output_dir)
    return output_dir
