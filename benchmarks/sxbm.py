"""S-XBM cost: the time of one training step against the memory size (the paper's table), memory full.

It times the trainer's own step (``smec.objective.stage_loss``, backward, Adam, enqueue) on stage 1 of the
SciFact chain, so the figure moves with the trainer rather than with a copy of its loop.
"""
from __future__ import annotations

import dataclasses
import time

import numpy as np
import torch
from accelerate import Accelerator

from smec_hf.data.examples import TrainingExamples
from smec_hf.smec.chain import SMECChain, default_dimension_path
from smec_hf.smec.memory import SelectableCrossBatchMemory
from smec_hf.smec.objective import stage_loss
from smec_hf.smec.settings import SMECSettings


def _filled_memory(corpus: np.ndarray, size: int, top_k: int, seed: int = 0) -> SelectableCrossBatchMemory:
    """A full memory of corpus rows (cycled, with a little noise so that repeats are not exact duplicates)."""
    rng = np.random.default_rng(seed)
    rows = np.resize(np.arange(len(corpus)), size)
    entries = np.asarray(corpus[np.sort(rows)], dtype=np.float32) + 1e-3 * rng.standard_normal((size, corpus.shape[1]),
                                                                                              dtype=np.float32)
    memory = SelectableCrossBatchMemory(corpus.shape[1], size, top_k)
    memory.enqueue(torch.from_numpy(entries))
    return memory


def sxbm_step_times(cache, train_qrels, out, sizes: tuple[int, ...], steps: int, config: SMECSettings) -> dict:
    """Median seconds per step for each memory size (0 = S-XBM off), over ``steps`` steps after 3 warm-up ones."""
    examples = TrainingExamples.for_config(cache, train_qrels, config)
    accelerator = Accelerator(cpu=True)
    dims = config.dims or default_dimension_path(cache.dim)
    levels = (dims[0], dims[1])
    rows = []
    for size in sizes:
        settings = dataclasses.replace(config, dims=dims, use_sxbm=size > 0, memory_size=max(size, 1))
        torch.manual_seed(config.seed)
        chain = SMECChain(dims).train()
        stage = chain.stages[0]
        trainable, optimizer = accelerator.prepare(stage, torch.optim.Adam(stage.parameters(), lr=config.lr))
        memory = _filled_memory(cache.corpus, max(size, 1), config.memory_top_k)
        generator = torch.Generator().manual_seed(config.seed)
        order = torch.randperm(len(examples.fit.pairs), generator=generator)
        times = []
        for step in range(steps + 3):
            index = order[torch.arange(step * config.batch_size, (step + 1) * config.batch_size) % len(order)]
            start = time.perf_counter()
            batch = examples.fit.batch(index, config.hard_negatives, generator)
            loss = stage_loss(chain, trainable, 0, batch, memory, settings, accelerator)
            optimizer.zero_grad()
            stage.weight_grad = None
            accelerator.backward(loss.total)
            optimizer.step()
            if size:
                memory.enqueue(torch.cat([batch.queries, batch.positives]))
            times.append(time.perf_counter() - start)
        rows.append({"memory_size": size, "seconds_per_step": float(np.median(times[3:]))})
        accelerator.free_memory()
    return {"levels": list(levels), "batch_size": config.batch_size, "top_k": config.memory_top_k,
            "rows": rows}
