"""Train the compared methods on one embedding cache, one after another or in parallel worker processes.

The heads are small (a 384x384 map and batches of a few hundred rows), so one process gains little from
a second thread while two single-threaded processes train two methods at once: on 2 cores, parallel
fitting roughly halves the demo's training time. Every method is seeded on its own, so a method's result
does not depend on which worker trains it or in what order.
"""
from __future__ import annotations

import dataclasses
import multiprocessing
import os
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from tqdm.auto import tqdm

from ..baselines._supervised import Schedule
from ..baselines.base import Compressor
from ..baselines.matryoshka_adaptor import MatryoshkaAdaptorCompressor
from ..baselines.mrl_joint import MRLJointCompressor
from ..baselines.pca import PCACompressor, TruncationCompressor
from ..baselines.search_adaptor import SearchAdaptorCompressor
from ..config import SMECTrainingConfig
from ..data.beir import RetrievalData
from ..data.cache import EmbeddingCache
from ..method.chain import SMECChain
from ..method.compressor import SMECCompressor

SMEC_RUN_DIR = "run"            # SMEC's own training run (``smec train``'s folder) inside the output folder
SMEC_ABLATIONS = {"smec_no_ads": {"use_ads": False}, "smec_no_sxbm": {"use_sxbm": False}}
# longest first, so the slowest method never starts last (measured on SciFact with MiniLM)
FIT_ORDER = ("smec", "matryoshka_adaptor", "search_adaptor", "mrl_joint", "smec_no_ads", "smec_no_sxbm",
             "pca", "truncation")


@dataclass
class FitJob:
    """Everything a (possibly separate) process needs to train one method."""

    name: str
    cache: EmbeddingCache | str          # a saved cache travels as its path and is memory-mapped again
    dataset: RetrievalData
    output_dir: Path
    dims: list[int]
    config: SMECTrainingConfig
    schedule: Schedule | None
    base_model_name: str
    base_model_id: str | None
    show_progress_bar: bool


def build_baseline(name: str, dims: Sequence[int], config: SMECTrainingConfig, work_dir: str | Path,
                   schedule: Schedule | None = None, show_progress_bar: bool = True) -> Compressor:
    """An unfitted method other than ``smec`` itself (which ``smec train``'s run produces).

    The supervised baselines and SMEC's ablations share SMEC's ``config`` (batches, negatives, loss scale,
    held-out split, seed; the learning rate too, except ``mrl_joint``'s, see its module); ``schedule`` is the
    supervised baselines' epoch budget.
    """
    dims = list(dims)
    if name == "truncation":
        return TruncationCompressor(dims)
    if name == "pca":
        return PCACompressor(dims)
    if name == "mrl_joint":
        return MRLJointCompressor(dims, config, schedule, show_progress_bar=show_progress_bar)
    if name == "matryoshka_adaptor":
        return MatryoshkaAdaptorCompressor(dims, config, schedule, show_progress_bar=show_progress_bar)
    if name == "search_adaptor":
        return SearchAdaptorCompressor(dims, config, schedule, show_progress_bar=show_progress_bar)
    if name in SMEC_ABLATIONS:
        ablation = dataclasses.replace(config, dims=dims, **SMEC_ABLATIONS[name])
        compressor = SMECCompressor(ablation, Path(work_dir) / name, show_progress_bar)
        compressor.name = name
        return compressor
    raise ValueError(f"unknown method {name!r}; choose from {', '.join(FIT_ORDER)}")


def default_workers() -> int:
    """One training process per two cores (two on a 2-core machine), at most 4."""
    cores = os.cpu_count() or 1
    return max(1, min(4, cores // 2 if cores > 2 else cores))


def fit_methods(names: Sequence[str], cache: EmbeddingCache, dataset: RetrievalData, output_dir: Path,
                dims: Sequence[int], config: SMECTrainingConfig, schedule: Schedule | None, base_model_name: str,
                base_model_id: str | None, workers: int = 1, show_progress_bar: bool = True
                ) -> tuple[dict[str, Compressor], dict | None, dict[str, float]]:
    """Fit every method in ``names``; returns ``(compressors by name, SMEC's run record or None, seconds)``.

    ``workers > 1`` trains that many methods at once in spawned processes (each with ``cores // workers``
    threads); their own progress bars are then off and one bar counts finished methods.
    """
    ordered = sorted(names, key=lambda n: FIT_ORDER.index(n) if n in FIT_ORDER else len(FIT_ORDER))
    jobs = [FitJob(name, cache, dataset, Path(output_dir), list(dims), config, schedule, base_model_name,
                   base_model_id, show_progress_bar) for name in ordered]
    results = dict(zip(ordered, run_fit_jobs(jobs, workers, show_progress_bar)))
    compressors = {name: results[name][0] for name in names}
    seconds = {name: results[name][2] for name in names}
    return compressors, results["smec"][1] if "smec" in results else None, seconds


def run_fit_jobs(jobs: Sequence[FitJob], workers: int = 1, show_progress_bar: bool = True
                 ) -> list[tuple[Compressor, dict | None, float]]:
    """Run ``jobs`` (in their order) in this process or on ``workers`` spawned processes; for each job return
    ``(fitted compressor, SMEC's run record for a "smec" job else None, seconds)``."""
    if workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    parallel = workers > 1 and len(jobs) > 1
    if parallel:   # a saved cache travels as its path and is memory-mapped again; no per-job progress bars
        jobs = [dataclasses.replace(job, cache=str(job.cache.path) if isinstance(job.cache, EmbeddingCache)
                                    and job.cache.path is not None else job.cache, show_progress_bar=False)
                for job in jobs]
    results: list[tuple[Compressor | dict, float] | None] = [None] * len(jobs)
    if not parallel:
        bar = tqdm(list(enumerate(jobs)), desc="methods", unit="method", disable=not show_progress_bar)
        for i, job in bar:
            bar.set_description(f"training {job.name}")
            results[i] = _fit(job)
        bar.close()
    else:
        threads = max(1, (os.cpu_count() or 1) // workers)
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_limit_threads,
                                 initargs=(threads,)) as pool:
            pending = {pool.submit(_fit, job): i for i, job in enumerate(jobs)}
            bar = tqdm(total=len(jobs), desc=f"training {len(jobs)} methods on {workers} workers", unit="method",
                       disable=not show_progress_bar)
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    i = pending.pop(future)
                    results[i] = future.result()
                    bar.update()
                    # (not the running ones: Future.running() is also true for jobs queued to a busy worker)
                    bar.set_postfix_str(f"done: {jobs[i].name}")
            bar.close()
    fitted = []
    for job, (result, seconds) in zip(jobs, results):
        if job.name == "smec":
            chain = SMECChain.load(Path(job.output_dir) / SMEC_RUN_DIR / "head")
            fitted.append((SMECCompressor.from_chain(chain), result, seconds))
        else:
            fitted.append((result, None, seconds))
    return fitted


def _limit_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _fit(job: FitJob) -> tuple[Compressor | dict, float]:
    """Train one method; SMEC itself returns its run record (the chain is read back from ``run/head``)."""
    from ..run import train_on_cache

    start = time.perf_counter()
    cache = EmbeddingCache.load(job.cache) if isinstance(job.cache, str) else job.cache
    if job.name == "smec":
        fitted = train_on_cache(cache, job.dataset, job.output_dir / SMEC_RUN_DIR, job.config, job.base_model_name,
                                job.show_progress_bar, base_model_id=job.base_model_id)
    else:
        fitted = build_baseline(job.name, job.dims, job.config, job.output_dir / "baselines", job.schedule,
                                job.show_progress_bar).fit(cache, job.dataset.qrels["train"])
    return fitted, time.perf_counter() - start
