"""The notebook way in: ``smec_hf.train(...)`` and ``smec_hf.export(...)``, the same jobs as ``smec train`` and
``smec export``, with Python objects where the CLI takes paths."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from .data.beir import RetrievalData
from .data.sources import load_retrieval_data
from .smec.settings import SMECSettings


def train(base_model: Any = None, data: Any = None, output_dir: str | Path = "smec-run", *,
          data_config: str | None = None, data_split: str | None = None, corpus: Any = None,
          cache_dir: str | Path = "~/.cache/smec_hf/embeddings", embeddings: str | Path | None = None,
          show_progress_bar: bool = True, trust_remote_code: bool = False, devices: list[str] | None = None,
          **config: Any) -> dict:
    """Train SMEC on a frozen encoder; returns the run record (also ``<output_dir>/smec_run.json``).

    ``base_model``: a Sentence-Transformers model id, a folder, or a loaded ``SentenceTransformer`` (default: the
    offline all-MiniLM-L6-v2); ``data``: a BEIR folder, a pairs/triplets/corpus file or ``save_to_disk`` folder,
    a Hub dataset id, a ``datasets.Dataset`` or a :class:`~smec_hf.data.beir.RetrievalData` (see
    :func:`~smec_hf.data.sources.load_retrieval_data`); ``embeddings``: a saved ``EmbeddingCache`` of precomputed
    vectors to train on instead of encoding; ``devices``: encode with one process per entry (``["cuda:0",
    "cuda:1"]``, ``["cpu"] * 4``); ``config``: any :class:`~smec_hf.smec.settings.SMECSettings` field
    (``dims=[384, 128, 32]``, ``seed=1``, ...). The settings, the data, the encoder and the folders are checked
    before anything is encoded or written. Rerunning into the same ``output_dir`` resumes an interrupted run.
    """
    from .pipelines.preflight import check_base_model, check_output_dir
    from .pipelines.train import check_trainable, run_training, with_groups

    settings = _settings(config)
    dataset = data if isinstance(data, RetrievalData) else load_retrieval_data(
        data, config=data_config, split=data_split, corpus=corpus)
    settings = with_groups(settings, data, dataset)
    check_trainable(dataset, settings, str(data) if isinstance(data, (str, Path)) else None)
    model = _model_name(base_model)
    if embeddings is None:
        check_base_model(model)
        check_output_dir(cache_dir, "--cache-dir")
    check_output_dir(output_dir, "--output")
    return run_training(output_dir, model, dataset, settings, cache_dir, embeddings,
                        show_progress_bar=show_progress_bar, trust_remote_code=trust_remote_code, devices=devices)


def export(run_dir: str | Path, output_dir: str | Path, **options: Any) -> Path:
    """Build the Hub-ready model folder of a run (the options of :func:`smec_hf.hf.export.export_model`), after
    checking the destination and any ``base_model`` given."""
    from .hf.export import export_model
    from .pipelines.preflight import check_base_model, check_output_dir

    check_output_dir(output_dir, "export destination")
    if "base_model" in options:
        options["base_model"] = _model_name(options["base_model"])
        check_base_model(options["base_model"])
    return export_model(run_dir, output_dir, **options)


def _settings(config: dict[str, Any]) -> SMECSettings:
    known = {f.name for f in dataclasses.fields(SMECSettings)}
    unknown = sorted(set(config) - known)
    if unknown:
        raise TypeError(f"unknown setting(s) {', '.join(unknown)}; SMECSettings has {', '.join(sorted(known))}")
    return SMECSettings(**config)


def _model_name(model: Any) -> str | None:
    """A loaded ``SentenceTransformer`` as the folder or Hub id it came from (what the cache key and the export
    need); strings and paths as they are."""
    if model is None or isinstance(model, (str, Path)):
        return None if model is None else str(model)
    try:
        origin = model[0].auto_model.config._name_or_path
    except (AttributeError, IndexError, TypeError):
        origin = None
    if origin and (not Path(origin).exists() or (Path(origin) / "modules.json").is_file()):
        return str(origin)
    raise ValueError("base_model: cannot tell which folder or Hub id this SentenceTransformer was loaded from; "
                     "save it (model.save(path)) and pass the path")
