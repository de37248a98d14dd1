"""``smec evaluate`` / ``make demo``: train every registered method on one cache, score them all with MTEB.

Output folder: see :mod:`smec_hf.core.layout`. Rerunning into the same folder resumes the methods'
training runs from their checkpoints (their trainer refuses a folder written with other settings) and
re-fits and re-scores everything else.

The base encoder runs over the corpus once, for the embedding cache (reused from disk on later runs). The
exported method is scored on those vectors once a sample of texts encoded through the exported model gives the
same embeddings (the report's notes say on how many); if not, the exported model encodes the corpus a second time
and is scored on that.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path
from typing import Any, Sequence

from .. import registry
from ..core import layout
from ..core.io import atomic_write_json
from ..core.types import Compressor
from ..data.beir import RetrievalData
from ..data.sources import load_retrieval_data
from ..data.cache import EmbeddingCache, default_base_model, load_or_encode
from ..engine.loop import Schedule
from ..evaluation.mteb_eval import evaluate_methods, single_task
from ..evaluation.mteb_official import evaluation_tasks, promote_full_dimension
from ..core.retrieval import ndcg_by_dim, neighbour_recall
from ..evaluation.intervals import compare_to_reference
from ..evaluation.precision import grid_report, precision_grid
from ..evaluation.held_out_views import gain_warning
from ..evaluation.report import (GRID, HEAD_CHOICE, HELD_OUT_VIEWS, INTERVALS, RECALL, TUNED_ENCODERS, build_report,
                                 summary, write_report)
from ..smec.chain import default_dimension_path, validate_dimension_path
from ..smec.no_harm import describe as describe_head_choice
from ..smec.settings import SMECSettings
from .fitting import default_workers, fit_methods
from .train import (DEFAULT_BASE_MODEL_ID, check_covers, check_trainable, evaluation_split, recall_probes_exclude,
                    with_groups)


def evaluate(output_dir: str | Path = "outputs/demo", *, base_model: str | None = None,
             data: str | Path | RetrievalData | None = None, dims: Sequence[int] | None = None,
             methods: Sequence[str] | None = None, embeddings: str | Path | None = None,
             settings: SMECSettings | None = None, schedule: Schedule | None = None,
             cache_dir: str | Path = "~/.cache/smec_hf/embeddings", task_names: Sequence[str] | None = None,
             workers: int | None = None, show_progress_bar: bool = True, trust_remote_code: bool = False,
             data_config: str | None = None, data_split: str | None = None, corpus: Any = None,
             devices: Sequence[str] | None = None) -> dict:
    """The whole job behind ``smec evaluate`` (and ``make demo``).

    ``base_model``: Sentence-Transformers path or Hub id (default: the offline all-MiniLM-L6-v2);
    ``data``: a BEIR folder, pairs/triplets table, corpus, Hub dataset id or :class:`RetrievalData` (default: the
    Hub's ``mteb/scifact``; ``data_config``, ``data_split``, ``corpus``: see
    :func:`~smec_hf.data.sources.load_retrieval_data`);
    ``dims``: the dimension path, starting at the encoder's size (default: it, then powers of two to 32);
    ``methods``: a subset of :data:`smec_hf.registry.NAMES`; ``settings``: SMEC's hyperparameters (the
    baselines read their shared :class:`~smec_hf.core.config.FitConfig` part); ``schedule``: the supervised
    baselines' epoch budget; ``embeddings``: a saved :class:`EmbeddingCache` of precomputed vectors to use
    instead of encoding (the exported method is then exported and scored through the model only if
    ``base_model`` names the encoder that produced them); ``task_names``: MTEB's own retrieval tasks to score
    on instead of the local test split (their data comes from the Hub); ``workers``: methods trained at once
    in separate processes (default: one per two cores, at most 4); ``trust_remote_code``: the base model needs
    custom code (encoding and export). Returns the report (also written to ``output_dir``).
    """
    started = time.perf_counter()
    dataset = data if isinstance(data, RetrievalData) else load_retrieval_data(
        data, config=data_config, split=data_split, corpus=corpus)
    settings = with_groups(settings or SMECSettings(), data, dataset)
    check_trainable(dataset, settings)    # before encoding
    registry.check_methods(methods, dataset.has_queries)
    base_model_id = None
    if embeddings is not None:
        cache = EmbeddingCache.load(embeddings)
    else:
        if base_model is None:
            base_model, base_model_id = default_base_model(), DEFAULT_BASE_MODEL_ID
        cache = load_or_encode(dataset, base_model, cache_dir, show_progress_bar=show_progress_bar,
                               trust_remote_code=trust_remote_code, devices=devices)
    timings = {"embed": time.perf_counter() - started}
    return evaluate_on_cache(cache, dataset, output_dir, base_model=base_model, base_model_id=base_model_id,
                             dims=dims, methods=methods, settings=settings, schedule=schedule, task_names=task_names,
                             timings=timings, workers=workers, show_progress_bar=show_progress_bar, started=started,
                             trust_remote_code=trust_remote_code)


def evaluate_on_cache(cache: EmbeddingCache, dataset: RetrievalData, output_dir: str | Path, *,
                      base_model: str | None, base_model_id: str | None = None, dims: Sequence[int] | None = None,
                      methods: Sequence[str] | None = None, settings: SMECSettings | None = None,
                      schedule: Schedule | None = None, task_names: Sequence[str] | None = None,
                      timings: dict[str, float] | None = None, workers: int | None = None,
                      show_progress_bar: bool = True, started: float | None = None,
                      trust_remote_code: bool = False) -> dict:
    """Train every method on a ready cache, export the exporting method (when ``base_model`` is known), score
    all with MTEB, write the report and the model card, print the summary; returns the report.

    ``base_model``: the encoder that produced the cache (a loadable path or Hub id; None for vectors from
    elsewhere); ``base_model_id``: its Hub id for the report and the card, when ``base_model`` is a local copy.
    ``settings`` is not changed.
    """
    started = time.perf_counter() if started is None else started
    timings = dict(timings or {})
    output_dir = Path(output_dir)
    names = registry.check_methods(methods, dataset.has_queries)
    workers = default_workers() if workers is None else workers
    settings = settings or SMECSettings()
    dims = validate_dimension_path(dims or settings.dims or default_dimension_path(cache.dim))
    if dims[0] != cache.dim:
        raise ValueError(f"--dims must start at the embedding dimension {cache.dim}, got {dims}")
    settings = dataclasses.replace(settings, dims=dims)
    check_covers(cache, dataset, "the embedding cache")
    encoder = cache.meta.get("encoder")
    base_model_name = base_model or (encoder.get("name") if isinstance(encoder, dict) else None) or "precomputed"
    if base_model_id is None and base_model is not None and not Path(base_model).exists():
        base_model_id = base_model                       # a Hub id: the name the report and the card show

    start = time.perf_counter()
    fitted, runs, seconds = fit_methods(names, cache, dataset, output_dir, dims, settings, schedule, base_model_name,
                                        base_model_id, workers=workers, show_progress_bar=show_progress_bar,
                                        trust_remote_code=trust_remote_code)
    timings.update({f"train_{name}": seconds[name] for name in names})
    timings["train_all_wall"] = time.perf_counter() - start      # less than the sum with parallel workers

    model_dirs: dict[str, Path] = {}
    if runs and base_model is not None:
        from ..hf.export import export_model

        start = time.perf_counter()
        for name in runs:
            model_dirs[name] = export_model(output_dir / layout.COMPARE_RUN_DIR, output_dir / layout.COMPARE_MODEL_DIR,
                                            base_model_id=base_model_id, trust_remote_code=trust_remote_code,
                                            overwrite=True)
        timings["export"] = time.perf_counter() - start
    tuned_models = export_tuned_encoders(fitted, output_dir, dims, trust_remote_code)

    mteb_dir = output_dir / layout.COMPARE_MTEB_DIR
    shutil.rmtree(mteb_dir, ignore_errors=True)          # the folder holds this run's results only
    split, qrels = evaluation_split(dataset, settings, cache.query_ids)
    notes = list(dataset.notes)
    if split == "test" or task_names:
        checks: dict = {}
        scores = evaluate_methods(list(fitted.values()), cache, evaluation_tasks(dataset, task_names=task_names),
                                  mteb_dir, model_dirs=model_dirs, show_progress_bar=show_progress_bar, timings=timings,
                                  checks=checks)
        promote_full_dimension(mteb_dir)
        by_method = single_task(scores)
        notes += [check.describe(name) for name, check in checks.items()]
        notes += [f"{name} was scored on the cached vectors through its head (no base model to export with)"
                  for name in runs if name not in model_dirs]
    elif qrels is not None:       # no test split: the held-out train queries, on the cached vectors
        by_method = {name: ndcg_by_dim(method.transform, cache, qrels, dims) for name, method in fitted.items()}
        notes.append("no test split: nDCG@10 of the held-out train queries early stopping used (optimistic), "
                     "scored on the cached vectors, not through MTEB")
    else:
        by_method = {}
        notes.append("no queries: every method trained without labels; scored by neighbour recall only")
    extra = {}
    choices = {name: run["head_choice"] for name, run in runs.items() if run.get("head_choice")}
    views = {name: run["results"][HELD_OUT_VIEWS] for name, run in runs.items() if HELD_OUT_VIEWS in run["results"]}
    if views:
        extra[HELD_OUT_VIEWS] = views
        notes += [f"{name}: {note}" for name, view in views.items() if (note := gain_warning(view, name))]
    if tuned_models:
        extra[TUNED_ENCODERS] = {name: fitted[name].encoder_record for name in tuned_models}
    if choices:
        extra[HEAD_CHOICE] = choices
        notes += [f"{name}: {note}" for name, choice in choices.items() for note in describe_head_choice(choice)]
    if qrels is not None:
        start = time.perf_counter()
        extra.update(comparison_sections(fitted, cache, qrels, dims))
        timings["precision_grid_and_intervals"] = time.perf_counter() - start
    start = time.perf_counter()
    excluded = recall_probes_exclude(dataset, settings, cache.query_ids)
    recall = {name: neighbour_recall(method.transform, cache, dims, exclude_ids=excluded)
              for name, method in fitted.items()}
    timings["neighbour_recall"] = time.perf_counter() - start
    reference = registry.FROZEN_REFERENCE
    frozen = by_method[reference][dims[0]] if reference in by_method else None
    timings["total"] = time.perf_counter() - started
    report = build_report(dataset.name, base_model_id or base_model_name, dims, by_method, timings,
                          frozen_full_dim=frozen, notes=notes, neighbour_recall=recall,
                          split=split if not task_names else "test", extra=extra)
    paths = write_report(report, output_dir)
    for name, run in runs.items():
        _record_in_run(run, report, output_dir / layout.COMPARE_RUN_DIR, model_dirs.get(name), paths["plot"])
    paths["mteb"] = mteb_dir
    paths.update({"model": d for d in model_dirs.values()})
    paths.update({f"{name} model": d for name, d in tuned_models.items()})
    print(summary(report, paths))
    return report


def export_tuned_encoders(fitted: dict[str, Compressor], output_dir: Path, dims: Sequence[int],
                          trust_remote_code: bool = False) -> dict[str, Path]:
    """Export every method that fine-tuned the encoder itself (its ``encoder_dir``, and its SMEC ``chain`` if it has
    one) as a Sentence-Transformers folder, ``baselines/<method>/model/``; returns the folders by method. Such a
    method is scored on its own re-encoded vectors (see :mod:`smec_hf.engine.encoder_finetune`), which are this
    folder's."""
    from ..hf.finetuned import export_finetuned

    return {name: export_finetuned(method.encoder_dir, output_dir / layout.COMPARE_BASELINES_DIR / name /
                                   layout.COMPARE_MODEL_DIR, dims, head=getattr(method, "chain", None),
                                   trust_remote_code=trust_remote_code, overwrite=True)
            for name, method in fitted.items() if getattr(method, "encoder_dir", None) is not None}


def comparison_sections(fitted: dict[str, Compressor], cache: EmbeddingCache, qrels: dict, dims: Sequence[int]
                        ) -> dict:
    """The report's per-byte view: every method's precision x dimension grid (exact search on the cached vectors,
    a sparse method's float codes at its own bytes), and SMEC's paired bootstrap intervals against each method
    (float32, per query) when SMEC is among them."""
    grids = {}
    for name, method in fitted.items():
        grid = precision_grid(method.transform, cache, qrels, dims)
        sparse_bytes = getattr(method, "bytes_per_vector", None)
        grids[name] = grid.as_sparse(sparse_bytes) if sparse_bytes is not None else grid
    extra = grid_report(grids)
    if "smec" in grids and len(grids) > 1:
        extra[INTERVALS] = compare_to_reference({m: g.per_query["float32"] for m, g in grids.items()}, "smec")
    return extra


def _record_in_run(run: dict, report: dict, run_dir: Path, model_dir: Path | None, plot_path: Path) -> None:
    """Put every method's MTEB scores in the run record (and the exported model's card and plot)."""
    results = {m: dict(v) for m, v in report["ndcg@10"].items()}
    if report["frozen_full_dim"] is not None:
        results["frozen"] = {str(report["dims"][0]): report["frozen_full_dim"]}
    run = {**run, "results": {**run["results"], "ndcg@10": results, RECALL: report.get(RECALL, {}),
                              **{k: report[k] for k in (GRID, INTERVALS) if k in report}},
           "results_source": "mteb", "timings_s": report["timings_s"]}
    atomic_write_json(run_dir / layout.RUN_FILE, run)
    if model_dir is not None:
        from ..hf.export import publishable_run
        from ..hf.model_card import build_model_card

        exported = json.loads((model_dir / layout.RUN_FILE).read_text())
        published = publishable_run({**exported, **{k: run[k] for k in ("results", "results_source", "timings_s")}})
        atomic_write_json(model_dir / layout.RUN_FILE, published)
        shutil.copyfile(plot_path, model_dir / plot_path.name)
        build_model_card({**published, "base_model": exported["base_model"]}, plot_file=plot_path.name).save(
            model_dir / "README.md")
