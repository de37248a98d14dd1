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
from typing import Callable, Sequence

from tqdm.auto import tqdm

from .. import registry
from ..core import layout
from ..core.types import Compressor
from ..data.beir import RetrievalData
from ..data.cache import EmbeddingCache
from ..engine.loop import Schedule
from ..smec.settings import SMECSettings
from .train import write_run


@dataclass
class FitJob:
    """Everything a (possibly separate) process needs to train one method."""

    name: str
    cache: EmbeddingCache | str          # a saved cache travels as its path and is memory-mapped again
    dataset: RetrievalData
    output_dir: Path
    dims: list[int]
    settings: SMECSettings
    schedule: Schedule | None
    base_model_name: str
    base_model_id: str | None
    show_progress_bar: bool
    trust_remote_code: bool = False

    @property
    def run_dir(self) -> Path:
        """Where the method writes its run: the exported method in ``run/``, others in ``baselines/<name>/``."""
        if registry.method(self.name).exports:
            return Path(self.output_dir) / layout.COMPARE_RUN_DIR
        return Path(self.output_dir) / layout.COMPARE_BASELINES_DIR / self.name


def default_workers() -> int:
    """One training process per two cores (two on a 2-core machine), at most 4."""
    cores = os.cpu_count() or 1
    return max(1, min(4, cores // 2 if cores > 2 else cores))


def fit_methods(names: Sequence[str], cache: EmbeddingCache, dataset: RetrievalData, output_dir: Path,
                dims: Sequence[int], settings: SMECSettings, schedule: Schedule | None, base_model_name: str,
                base_model_id: str | None, workers: int = 1, show_progress_bar: bool = True,
                trust_remote_code: bool = False) -> tuple[dict[str, Compressor], dict[str, dict], dict[str, float]]:
    """Fit every method in ``names``; returns ``(compressors by name, run records of exporting methods, seconds)``.

    ``workers > 1`` trains that many methods at once in spawned processes (each with ``cores // workers``
    threads); their own progress bars are then off and one bar counts finished methods.
    """
    ordered = registry.ordered(names)
    jobs = [FitJob(name, cache, dataset, Path(output_dir), list(dims), settings, schedule, base_model_name,
                   base_model_id, show_progress_bar, trust_remote_code) for name in ordered]
    results = dict(zip(ordered, run_fit_jobs(jobs, workers, show_progress_bar)))
    compressors = {name: results[name][0] for name in names}
    runs = {name: results[name][1] for name in names if results[name][1] is not None}
    seconds = {name: results[name][2] for name in names}
    return compressors, runs, seconds


FitResult = tuple[Compressor, dict | None, float]


def run_fit_jobs(jobs: Sequence[FitJob], workers: int = 1, show_progress_bar: bool = True,
                 on_done: Callable[[int, FitResult], None] | None = None) -> list[FitResult]:
    """Run ``jobs`` (in their order) in this process or on ``workers`` spawned processes; for each job return
    ``(fitted compressor, its run record if the method exports else None, seconds)``.

    ``on_done(i, result)`` is called as soon as job ``i`` finishes, so a caller can keep each result (e.g. write
    it to disk) before the slowest job ends."""
    if workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    parallel = workers > 1 and len(jobs) > 1
    if parallel:   # a saved cache travels as its path and is memory-mapped again; no per-job progress bars
        jobs = [dataclasses.replace(job, cache=str(job.cache.path) if isinstance(job.cache, EmbeddingCache)
                                    and job.cache.path is not None else job.cache, show_progress_bar=False)
                for job in jobs]
    results: list[FitResult | None] = [None] * len(jobs)
    on_done = on_done or (lambda i, result: None)
    if not parallel:
        bar = tqdm(list(enumerate(jobs)), desc="methods", unit="method", disable=not show_progress_bar)
        for i, job in bar:
            bar.set_description(f"training {job.name}")
            results[i] = _fit(job)
            on_done(i, results[i])
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
                    on_done(i, results[i])
                    bar.update()
                    # (not the running ones: Future.running() is also true for jobs queued to a busy worker)
                    bar.set_postfix_str(f"done: {jobs[i].name}")
            bar.close()
    return results


def _limit_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _fit(job: FitJob) -> FitResult:
    """Train one method; a method that exports also writes its run record (scored on the test split)."""
    start = time.perf_counter()
    cache = EmbeddingCache.load(job.cache) if isinstance(job.cache, str) else job.cache
    context = registry.BuildContext(job.dims, job.settings, job.run_dir, job.schedule, job.show_progress_bar,
                                    job.dataset, job.base_model_name, job.trust_remote_code)
    compressor = registry.method(job.name).build(context).fit(cache, job.dataset.qrels.get("train", {}))
    run = None
    if registry.method(job.name).exports:
        run = write_run(compressor, context.settings, cache, job.dataset, job.run_dir, job.base_model_name,
                        {"train": time.perf_counter() - start}, base_model_id=job.base_model_id)
    return compressor, run, time.perf_counter() - start
