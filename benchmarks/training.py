"""Training throughput per SMRL stage (query-document pairs/s) and peak memory, through the real trainer."""
from __future__ import annotations

import json
import shutil
import statistics
import time
from pathlib import Path

from smec_hf.data.examples import TrainingExamples
from smec_hf.smec.settings import SMECSettings
from smec_hf.smec.trainer import SMECTrainer

from .common import MemoryPeak


def training_throughput(cache, train_qrels, out: Path, config: SMECSettings, repeats: int) -> dict:
    """Median pairs/s of each stage over ``repeats`` runs; held-out evaluation and per-epoch checkpoints are off
    (``eval_every``/``checkpoint_every`` beyond ``max_epochs``), so the figure is the training steps alone."""
    with MemoryPeak() as setup_peak:
        start = time.perf_counter()
        examples = TrainingExamples.for_config(cache, train_qrels, config)
        setup_s = time.perf_counter() - start
    pairs = len(examples.fit.pairs)
    per_stage: dict[int, list[float]] = {}
    levels: dict[int, list[int]] = {}
    peaks = [setup_peak]
    for r in range(repeats):   # a fresh run folder each time (a benchmark never resumes); the mining is shared
        shutil.rmtree(out / f"run{r}", ignore_errors=True)
        trainer = SMECTrainer(config, cache, train_qrels, out / f"run{r}", show_progress_bar=False, examples=examples)
        with MemoryPeak() as peak:
            trainer.train()
        peaks.append(peak)
        for record in map(json.loads, trainer.log_path.read_text().splitlines()):
            if record.get("done"):
                per_stage.setdefault(record["stage"], []).append(config.max_epochs * pairs / record["seconds"])
                levels[record["stage"]] = record["levels"]
    return {
        "docs": len(cache.corpus_ids), "dim": cache.dim, "train_pairs": pairs, "epochs": config.max_epochs,
        "batch_size": config.batch_size, "memory_size": config.memory_size,
        "setup_s": setup_s,   # held-out split + hard-negative mining over the whole corpus
        "stages": [{"levels": levels[s], "pairs_per_s": statistics.median(v)} for s, v in sorted(per_stage.items())],
        "peak_rss_mib": max(p.rss_mib for p in peaks), "peak_anon_mib": max(p.anon_mib for p in peaks),
        "corpus_file_mib": cache.corpus.nbytes / 2**20,
    }


def throughput_config(**overrides) -> SMECSettings:
    """The default hyperparameters, with evaluation and per-epoch checkpoints moved out of the timed loop."""
    values = {"max_epochs": 3, "eval_every": 10**6, "checkpoint_every": 10**6, **overrides}
    return SMECSettings(**values)
