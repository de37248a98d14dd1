"""One SMRL stage's objective: ``L_rank`` at the stage's two levels (+ the lookahead levels) + ``w * L_unsup``.

Public so that benchmarks and tests time or inspect exactly the step the trainer takes.

Under DDP each process computes its share: ``mine`` are the global batch's query rows it owns, ranked against
every candidate of the global batch (cross-process in-batch negatives). Each loss is rescaled from the shard's
mean to ``num_processes * shard sum / batch count``; DDP averages gradients, so the result is the gradient of
the whole batch's mean loss, as in one process. Candidates are re-encoded here, not all-gathered: the head is
one linear map, so that is cheaper than a differentiable all-gather, and exact.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from accelerate import Accelerator

from ..core.retrieval import rows_as_tensor
from ..data.examples import Batch, RankingExamples
from ..engine.losses import graded_ranking_loss, ranking_pair_count, similarity_preservation_loss
from .chain import SMECChain, SMRLStage
from .memory import SelectableCrossBatchMemory
from .settings import SMECSettings


class StageLoss(NamedTuple):
    total: torch.Tensor   # rank + unsup_weight * unsup: what is back-propagated
    rank: torch.Tensor
    unsup: torch.Tensor


def forward_stage(chain: SMECChain, trainable: torch.nn.Module, s: int, x: torch.Tensor) -> torch.Tensor:
    """The running vector after stage ``s``: frozen stages without gradient, then the trainable one."""
    with torch.no_grad():
        y = chain(x, n_stages=s)
    lead = chain.dims[s]
    return torch.cat([trainable(y[:, :lead]), y[:, lead:]], dim=1)


def stage_loss(chain: SMECChain, trainable: torch.nn.Module, s: int, batch: Batch, mine: torch.Tensor,
               memory: SelectableCrossBatchMemory, settings: SMECSettings, accelerator: Accelerator) -> StageLoss:
    """This process's share of stage ``s``'s loss on ``batch`` (see the module docstring).

    Queries, documents and memory neighbours go through the stage in ONE forward pass, so they share the
    step's ADS sample: separate passes would compare queries and documents on different coordinates.
    """
    cfg, dims, device, n_proc = settings, chain.dims, accelerator.device, accelerator.num_processes
    levels = (dims[s], dims[s + 1])
    queries, labels = batch.queries[mine], batch.labels[mine]
    frozen = torch.cat([queries, batch.positives[mine]]).to(device)
    neighbours, valid = memory.select(frozen) if cfg.use_sxbm and len(memory) else (None, None)
    rows = [queries.to(device), batch.docs.to(device)]
    if neighbours is not None:
        rows += [frozen, neighbours.reshape(-1, dims[0])]
    out = forward_stage(chain, trainable, s, torch.cat(rows))
    q, d = out[: len(rows[0])], out[len(rows[0]) : len(rows[0]) + len(rows[1])]
    rank = sum(graded_ranking_loss(q[:, :k], d[:, :k], labels.to(device), cfg.similarity_scale) for k in levels)
    if cfg.lookahead_weight:
        rank = rank + cfg.lookahead_weight * sum(
            graded_ranking_loss(q[:, :k], d[:, :k], labels.to(device), cfg.similarity_scale) for k in dims[s + 2:])
    rank = rank * (n_proc * ranking_pair_count(labels) / max(ranking_pair_count(batch.labels), 1))
    unsup = torch.zeros((), device=device)
    if neighbours is not None:
        start = len(rows[0]) + len(rows[1])
        ours = out[start : start + len(frozen)]
        theirs = out[start + len(frozen) :].reshape(len(frozen), neighbours.shape[1], out.shape[1])
        if cfg.sxbm_target == "frozen":
            target = (frozen, neighbours)
        else:
            target = (ours[:, : levels[0]].detach(), theirs[:, :, : levels[0]].detach())
        unsup = similarity_preservation_loss(*target, ours[:, : levels[1]], theirs[:, :, : levels[1]], valid)
        pairs = valid.sum()
        unsup = unsup * (n_proc * pairs / accelerator.reduce(pairs, "sum").clamp_min(1))
    return StageLoss(rank + cfg.unsup_weight * unsup, rank, unsup)


@torch.no_grad()
def init_ads(chain: SMECChain, s: int, corpus, lookahead: bool) -> None:
    """Start stage ``s``'s ADS from each coordinate's second moment on the corpus (PCA order for stage 1);
    with ``lookahead`` a later stage starts from the prefix the earlier stages trained for its levels."""
    dims = chain.dims
    if s > 0 and lookahead:
        chain.stages[s].ads.init_from_importance(torch.arange(dims[s], 0, -1, dtype=torch.float64))
        return
    sample = rows_as_tensor(corpus, slice(0, 20000)).to(next(chain.parameters()).device)
    block = chain(sample, n_stages=s)[:, : dims[s]]
    chain.stages[s].ads.init_from_importance(chain.stages[s].fc(block).pow(2).mean(dim=0))


def gradient_split(stage: SMRLStage, kept_dim: int, accelerator: Accelerator) -> tuple[float, float]:
    """Mean |grad| of the FC rows whose outputs the stage keeps vs drops (the paper's SMRL diagnostic).

    The per-process gradients are averaged first (as DDP does), so the figure is the whole batch's.
    """
    grad, stage.weight_grad = stage.weight_grad, None
    if grad is None:
        return 0.0, 0.0
    grad = accelerator.reduce(grad.contiguous(), "mean").cpu()
    kept = stage.ads.selected_indices().cpu() if stage.ads is not None else torch.arange(kept_dim)
    mask = torch.zeros(grad.shape[0], dtype=torch.bool)
    mask[kept] = True
    return float(grad[mask].abs().mean()), float(grad[~mask].abs().mean()) if (~mask).any() else 0.0


@torch.no_grad()
def held_out_loss(chain: SMECChain, n_stages: int, levels: tuple[int, ...], held: RankingExamples,
                  settings: SMECSettings) -> float:
    """Ranking loss on held-out queries with fixed candidates (their positives + top mined negatives)."""
    was_training = chain.training
    chain.eval()
    batch = held.batch(torch.arange(len(held.pairs)), settings.hard_negatives, deterministic=True)
    device = next(chain.parameters()).device
    q, d = chain(batch.queries.to(device), n_stages), chain(batch.docs.to(device), n_stages)
    labels = batch.labels.to(device)
    loss = sum(graded_ranking_loss(q[:, :k], d[:, :k], labels, settings.similarity_scale) for k in levels)
    chain.train(was_training)
    return float(loss)


def annealed(start: float, end: float, epoch: int, epochs: int) -> float:
    """The ADS temperature at ``epoch``: geometric from ``start`` to ``end`` over ``epochs``."""
    return start * (end / start) ** (epoch / max(epochs - 1, 1))
