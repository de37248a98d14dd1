"""The one early-stopped training loop, used by every SMEC stage and every supervised baseline.

Before the first epoch the untrained start is scored (PCA for SMEC's stage 1 and the adaptors, the inherited prefix
for a later stage). After every ``eval_every`` epochs the held-out score decides: a gain of more than
:data:`MIN_GAIN` over the best trained epoch so far keeps a snapshot, ``patience`` evaluations without one stop the
loop. The run then keeps its best trained epoch, unless the start beats it by more than the held-out set's noise
(:mod:`smec_hf.engine.evidence`, on the per-query scores a score may return under :data:`PER_QUERY`): training is
what a user asked for, so a held-out difference within noise does not undo it. What an epoch does, what is scored
and what is written (logs, checkpoints) is the caller's, through callables and callbacks. Under DDP every process
scores, and the main process's decision is the one all follow.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Callable, ContextManager, Iterable, Sequence

import torch
from accelerate.utils import broadcast_object_list
from torch import nn
from tqdm.auto import tqdm

from .evidence import clearly_above

MIN_GAIN = 1e-6   # a score must rise by more than this to count as an improvement
PER_QUERY = "per_query"   # optional field of a score's details: its per-query scores (taken out of the record)

Score = Callable[[], tuple[float, dict]]   # () -> (early-stopping score, extra fields for the epoch record)


@dataclass
class Schedule:
    """An epoch budget with early stopping.

    The default is the baselines' budget (an epoch = one pass over the fit pairs, 7 steps on SciFact): a
    baseline trains its whole head in one go. On SciFact with MiniLM (lr 1e-3) the joint head's held-out
    nDCG@10 was still rising at epoch 40 and peaked near epoch 190 (mean over dims 0.769 -> 0.835); with
    patience 10 some seeds stopped on a noisy plateau that patience 30 got past. Matryoshka-Adaptor's paper
    allows 5,000 steps with patience 500. SMEC's stages have their own (``SMECSettings.stage_schedule``).
    """

    max_epochs: int = 300
    patience: int = 30
    eval_every: int = 1

    def __post_init__(self) -> None:
        if self.max_epochs < 1 or self.patience < 1 or self.eval_every < 1:
            raise ValueError(f"max_epochs, patience and eval_every must be >= 1, got {self.max_epochs}, "
                             f"{self.patience} and {self.eval_every}")

    @property
    def evaluates(self) -> bool:
        """False when no epoch is ever scored (then the last epoch is kept, e.g. for throughput runs)."""
        return self.eval_every <= self.max_epochs


@dataclass
class LoopState:
    """The loop's bookkeeping; a checkpoint saves it so that a resumed loop takes the same decisions."""

    epoch: int = -1                      # last finished epoch; -1 = not started
    best_score: float = -math.inf        # of the best trained epoch (after the loop: of what was kept)
    best_epoch: int = -1                 # -1 = the untrained start
    bad_evals: int = 0
    start_score: float = -math.inf
    start_per_query: list[float] | None = None
    best_per_query: list[float] | None = None
    start_kept_over: int | None = None   # the trained epoch the start was kept over (it beat it beyond noise)
    best_state: dict[str, torch.Tensor] | None = field(default=None, repr=False)
    start_state: dict[str, torch.Tensor] | None = field(default=None, repr=False)

    def counters(self) -> dict:
        """The JSON-serialisable part (``best_state`` and ``start_state`` are saved as tensors)."""
        return {"epoch": self.epoch, "best_score": self.best_score, "best_epoch": self.best_epoch,
                "bad_evals": self.bad_evals, "start_score": self.start_score, "start_per_query": self.start_per_query,
                "best_per_query": self.best_per_query, "start_kept_over": self.start_kept_over}

    def keep_start_or_best(self) -> None:
        """Decide between the untrained start and the best trained epoch: the start replaces the trained epoch only
        when it is clearly above it on the same held-out queries, or, for a score without per-query values, when
        its mean is higher."""
        if self.best_epoch < 0:
            return
        if self.start_per_query is not None and self.best_per_query is not None:
            keep = clearly_above(self.start_per_query, self.best_per_query)
        else:
            keep = self.start_score > self.best_score + MIN_GAIN
        if keep:
            self.start_kept_over = self.best_epoch
            self.best_score, self.best_epoch, self.best_per_query = self.start_score, -1, self.start_per_query
            self.best_state = self.start_state


class LoopCallback:
    """Hooks into :func:`fit_early_stopped`; override what you need."""

    def on_start(self, record: dict, state: LoopState) -> None:
        """After the untrained start was scored (``record`` holds the score's fields)."""

    def on_epoch_end(self, record: dict, state: LoopState, stop: bool) -> None:
        """After each epoch (scored or not); ``stop`` is true for the last one."""


class History(LoopCallback):
    """Collects the start and every epoch record, as a list."""

    def __init__(self) -> None:
        self.records: list[dict] = []

    def on_start(self, record: dict, state: LoopState) -> None:
        self.records.append({"epoch": -1, **record})

    def on_epoch_end(self, record: dict, state: LoopState, stop: bool) -> None:
        self.records.append(record)


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of the module's state, safe from later optimizer steps."""
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def fit_early_stopped(model: nn.Module, train_epoch: Callable[[int], dict], score: Score, schedule: Schedule, *,
                      keep: nn.Module | None = None, state: LoopState | None = None,
                      evaluation: Callable[[], ContextManager] = contextlib.nullcontext,
                      callbacks: Sequence[LoopCallback] = (), desc: str = "",
                      show_progress_bar: bool = True) -> LoopState:
    """Train ``model`` epoch by epoch until ``schedule`` stops it; restore the best snapshot of ``keep``.

    ``train_epoch(epoch)`` runs one epoch and returns its record (at least ``loss``); ``score()`` returns the
    early-stopping score and fields for the record; ``keep`` (default ``model``) is the part whose best state
    is kept (SMEC: the stage, not the frozen chain); ``state`` resumes a checkpointed loop; ``evaluation()``
    is entered around scoring (SMEC: swap in the weight average). Returns the final state.
    """
    keep = keep if keep is not None else model
    state = state if state is not None else LoopState()
    if state.epoch < 0 and schedule.evaluates:
        model.eval()
        value, record = score()
        state.start_score = state.best_score = broadcast_object_list([value])[0]
        state.start_per_query = state.best_per_query = _per_query(record)
        state.start_state = state.best_state = snapshot(keep)
        for callback in callbacks:
            callback.on_start(record, state)
    bar = tqdm(range(state.epoch + 1, schedule.max_epochs), desc=desc, disable=not show_progress_bar, leave=False)
    for epoch in bar:
        model.train()
        record = {"epoch": epoch, **train_epoch(epoch)}
        state.epoch = epoch
        stop = False
        if (epoch + 1) % schedule.eval_every == 0:
            model.eval()
            with evaluation():
                value, details = score()
                per_query = _per_query(details)
                record.update(details)
                first_trained = state.best_epoch < 0
                if broadcast_object_list([first_trained or value > state.best_score + MIN_GAIN])[0]:
                    state.best_score, state.best_epoch, state.bad_evals = value, epoch, 0
                    state.best_per_query, state.best_state = per_query, snapshot(keep)
                else:
                    state.bad_evals += 1
            stop = state.bad_evals >= schedule.patience
            bar.set_postfix(loss=f"{record['loss']:.4f}", ndcg=f"{value:.4f}", best=f"{state.best_score:.4f}")
        for callback in callbacks:
            callback.on_epoch_end(record, state, stop)
        if stop:
            break
    bar.close()
    if schedule.evaluates:
        state.keep_start_or_best()
    if state.best_state is not None:
        keep.load_state_dict(state.best_state)
    model.eval()
    return state


def _per_query(details: dict) -> list[float] | None:
    """Take a score's per-query values out of its record fields (they are decided on, not logged)."""
    values = details.pop(PER_QUERY, None)
    return None if values is None else [float(v) for v in values]


def optimizer_epoch(optimizer: torch.optim.Optimizer, steps: Callable[[], Iterable],
                    loss_fn: Callable[..., torch.Tensor]) -> Callable[[int], dict]:
    """``train_epoch`` for a plain single-process method: ``loss_fn(step)`` for every step, Adam-style update."""

    def train_epoch(epoch: int) -> dict:
        total, n = 0.0, 0
        for step in steps():
            loss = loss_fn(step)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total, n = total + float(loss.detach()), n + 1
        return {"loss": total / max(n, 1)}

    return train_epoch
