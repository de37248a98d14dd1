"""``smec export``: turn a training run folder into one Hub-ready repository served by two libraries.

Layout (verified from a folder, from a Hub repo and from the offline Hub cache)::

    config.json                   SMECConfig: model_type "smec", auto_map, matryoshka_dimensions, is_matryoshka, ...
    configuration_smec.py         code for AutoConfig / AutoModel (trust_remote_code=True), imports no smec_hf
    modeling_smec.py
    modules.json                  Sentence-Transformers pipeline, built-in modules only:
    config_sentence_transformers.json
    0_Transformer/                  base encoder: config.json, model.safetensors, tokenizer files
    1_Pooling/                      the base model's pooling
    2_Normalize/                    the base model's normalisation (only if the base model has one)
    3_Dense/                        the folded SMEC chain: one linear map, identity activation
    smec_run.json                 the training run (hyperparameters, per-dimension results)
    README.md                     model card

Why this layout:

* ``SentenceTransformer(repo)`` must work with no ``trust_remote_code`` and no ``smec_hf``. SMEC's inference chain
  (linear stages + ADS index selections) folds into one affine map whose output prefixes are the SMEC embeddings,
  so the built-in ``Dense`` carries it exactly, and ``truncate_dim=k`` (a prefix slice) is exact.
* ``AutoModel`` needs the root ``config.json`` to be the ``SMECConfig`` with ``auto_map``, while a root-level
  Sentence-Transformers ``Transformer`` would read that same file as the encoder's config. Saving the
  ``Transformer`` in ``0_Transformer/`` (as older Sentence-Transformers repos did) frees the root file.
* The encoder's weights exist once, in ``0_Transformer/model.safetensors``; ``SMECModel.from_pretrained`` reads
  them and ``3_Dense/model.safetensors`` through ``cached_file``, so a repo id downloads exactly those files.
* The alternative (one root ``SMECModel`` loaded by Sentence-Transformers through its ``Transformer`` module,
  ``ecosystem.md`` §2.5) needs custom code for every Sentence-Transformers user, which is what we avoid.

Re-saving a loaded model with ``SentenceTransformer.save`` moves the encoder back to the root and drops the
``SMECConfig``; re-export with ``smec export`` instead.
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from sentence_transformers import SentenceTransformer, SentenceTransformerModelCardData
from sentence_transformers.base.modules import Normalize, Transformer
from sentence_transformers.sentence_transformer.modules import Pooling

from ..core import layout
from ..smec.chain import SMECChain
from .configuration_smec import POOLING_MODES, SMECConfig
from .model_card import build_model_card
from .modeling_smec import save_root_config
from .st_module import SMECModule

logger = logging.getLogger(__name__)

REQUIRED_RUN_KEYS = ("base_model", "dims", "dataset", "config", "results")


def load_run(run_dir: str | Path) -> tuple[dict, SMECChain]:
    """Read ``smec_run.json`` and the trained chain, and check that they describe the same dimension path."""
    run_dir = Path(run_dir)
    run_file = run_dir / layout.RUN_FILE
    if not run_file.is_file():
        raise FileNotFoundError(f"{run_file} not found: not a folder written by `smec train`")
    run = json.loads(run_file.read_text())
    missing = [key for key in REQUIRED_RUN_KEYS if key not in run]
    if missing:
        raise ValueError(f"{run_file} lacks {missing}")
    layout.check_format(run, layout.RUN_FORMAT, str(run_file))
    chain = SMECChain.load(run_dir / layout.HEAD_DIR).eval()
    if chain.dims != [int(d) for d in run["dims"]]:
        raise ValueError(f"{run_file} says dims {run['dims']} but {run_dir / layout.HEAD_DIR} holds a chain for {chain.dims}")
    return run, chain


def split_base_pipeline(base: SentenceTransformer) -> tuple[Transformer, Pooling, Normalize | None]:
    """The base model's modules, if SMECModel can reproduce them: Transformer -> Pooling [-> Normalize]."""
    modules = list(base)
    kinds = [type(m).__name__ for m in modules]
    shape_ok = (len(modules) in (2, 3) and isinstance(modules[0], Transformer) and isinstance(modules[1], Pooling)
                and (len(modules) == 2 or isinstance(modules[2], Normalize)))
    if not shape_ok:
        raise ValueError(f"smec export supports base models Transformer -> Pooling [-> Normalize], got {kinds}")
    transformer, pooling = modules[0], modules[1]
    if pooling.pooling_mode not in POOLING_MODES:
        raise ValueError(f"pooling mode {pooling.pooling_mode!r} is not supported; use one of {POOLING_MODES}")
    if transformer.module_output_name != "token_embeddings":
        raise ValueError("the base Transformer must output token embeddings for Pooling")
    return transformer, pooling, modules[2] if len(modules) == 3 else None


def prepare_output_dir(output_dir: Path, overwrite: bool) -> None:
    if output_dir.exists() and any(output_dir.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{output_dir} exists and is not empty; pass overwrite=True to replace it")
        shutil.rmtree(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)


def export_model(run_dir: str | Path, output_dir: str | Path, *, repo_id: str | None = None,
                 base_model_id: str | None = None, dataset_id: str | None = None, license: str = "apache-2.0",
                 overwrite: bool = False) -> Path:
    """Build the Hub-ready folder for the run in ``run_dir``; returns ``output_dir``.

    ``repo_id`` goes into the model card (``push_model`` fills it in later otherwise); ``base_model_id`` and
    ``dataset_id`` name the Hub ids for the card metadata when the run used local folders (they default to the
    run's ``base_model_id`` / ``dataset_id`` keys, then to ``base_model`` / ``dataset`` when those are Hub ids).
    """
    run, chain = load_run(run_dir)
    output_dir = Path(output_dir)
    try:
        base = SentenceTransformer(run["base_model"], device="cpu")
    except OSError as error:
        raise ValueError(f"cannot load the run's base model {run['base_model']!r}, which the export "
                         f"packages with the head: {error}") from error
    transformer, pooling, normalize = split_base_pipeline(base)
    head = SMECModule.from_chain(chain).to_dense()
    prepare_output_dir(output_dir, overwrite)

    transformer.save_in_root = False  # frees the root config.json for SMECConfig, see the module docstring
    modules = [m for m in (transformer, pooling, normalize, head) if m is not None]
    model = SentenceTransformer(
        modules=modules, device="cpu", similarity_fn_name="cosine", prompts=base.prompts,
        default_prompt_name=base.default_prompt_name,
        model_card_data=SentenceTransformerModelCardData(local_files_only=True, generate_widget_examples=False),
    )
    model.save(str(output_dir), create_model_card=False)

    paths = [entry["path"] for entry in json.loads((output_dir / "modules.json").read_text())]
    config = SMECConfig(
        encoder_config=transformer.auto_model.config, dimension_path=chain.dims,
        pooling_mode=pooling.pooling_mode, normalize_input=normalize is not None,
        max_seq_length=transformer.max_seq_length, encoder_subfolder=paths[0], head_subfolder=paths[-1],
    )
    save_root_config(config, output_dir)
    shutil.copyfile(Path(run_dir) / layout.RUN_FILE, output_dir / layout.RUN_FILE)
    card = build_model_card(run, repo_id=repo_id, base_model_id=base_model_id, dataset_id=dataset_id,
                            license=license, encoder_subfolder=paths[0])
    card.save(output_dir / "README.md")
    logger.info("exported %s to %s", run_dir, output_dir)
    return output_dir
