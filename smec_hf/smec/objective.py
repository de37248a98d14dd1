"""One SMRL stage's objective: ``L_rank`` at the stage's two levels (+ the lookahead levels) + ``w * L_unsup``;
without labels (a corpus-only dataset) the corpus structure loss takes L_rank's place (:func:`corpus_stage_loss`).

Public so that benchmarks and tests time or inspect exactly the step the trainer takes.

Under DDP each process gets its part of the global batch (:meth:`~smec_hf.data.examples.RankingExamples.batch`
with ``part``): its share of the queries (with their positives) and its share of the batch's unique candidates,
the only corpus rows it reads. It encodes those, all-gathers the encoded candidates *with gradient*
(:func:`~smec_hf.engine.distributed.gather_with_grad`) and ranks its queries against every candidate of the
global batch (cross-process in-batch negatives). Each ranking loss is rescaled from the shard's mean to
``num_processes * shard sum / global pair count``; the gather's backward sums, onto the process that encoded a
candidate, the gradient every process's queries put on it, and DDP averages the parameter gradients, so the
result is the gradient of the whole batch's mean loss, as in one process. S-XBM selects and re-encodes memory
neighbours for the process's own rows only.

ADS: a process's queries are compared with candidates other processes encoded, so all must use the same ADS
sample. ADS draws its Gumbel noise from the device's global RNG once per forward pass (:mod:`.ads`); the trainer
seeds that RNG identically in every process (``set_seed`` per stage, restored per process on resume) and every
process runs the same number of forward passes per step, so every process draws the same sample each step.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from accelerate import Accelerator

from ..core.retrieval import rows_as_tensor
from ..data.examples import Batch, CorpusBatch, RankingExamples
from ..engine.distributed import gather_with_grad
from ..engine.losses import corpus_structure_loss, graded_ranking_loss, ranking_pair_count, similarity_preservation_loss
from .chain import SMECChain, SMRLStage
from .memory import SelectableCrossBatchMemory
from .settings import SMECSettings


class StageLoss(NamedTuple):
    total: torch.Tensor   # main + weight * unsup: what is back-propagated
    main: torch.Tensor    # L_rank, or without labels the corpus structure loss
    unsup: torch.Tensor   # S-XBM's memory term


def forward_stage(chain: SMECChain, trainable: torch.nn.Module, s: int, x: torch.Tensor) -> torch.Tensor:
    """The leading ``dims[s]`` coordinates of the running vector after stage ``s``, the only ones its losses read
    (every level it trains is a prefix of them): frozen stages without gradient (folded, see
    :meth:`~smec_hf.smec.chain.SMECChain.frozen_output`), then the trainable one."""
    return trainable(chain.frozen_output(x, s, chain.dims[s]))


def stage_loss(chain: SMECChain, trainable: torch.nn.Module, s: int, batch: Batch,
               memory: SelectableCrossBatchMemory, settings: SMECSettings, accelerator: Accelerator,
               corpus: CorpusBatch | None = None) -> StageLoss:
    """This process's share of stage ``s``'s loss on ``batch``, its part of the global batch (see the module
    docstring; one process's part is the whole batch).

    Queries, documents and memory neighbours go through the stage in ONE forward pass, so they share the
    step's ADS sample: separate passes would compare queries and documents on different coordinates.
    ``corpus``: random corpus documents and their frozen neighbours, whose :func:`corpus_structure_loss` at the
    stage's levels joins L_rank with ``settings.corpus_weight`` (Matryoshka-Adaptor's regularisers). Every process
    computes it on the same rows, so DDP's gradient average is that term's gradient.
    """
    cfg, dims, device, n_proc = settings, chain.dims, accelerator.device, accelerator.num_processes
    levels = (dims[s], dims[s + 1])
    labels = batch.labels.to(device)
    frozen = torch.cat([batch.queries, batch.positives]).to(device)
    neighbours, valid = memory.select(frozen) if cfg.use_sxbm and len(memory) else (None, None)
    rows = [batch.queries.to(device), batch.docs.to(device)]
    if neighbours is not None:
        rows += [frozen, neighbours.reshape(-1, dims[0])]
    if corpus is not None:
        corpus_docs, corpus_nb = corpus.docs.to(device), corpus.neighbours.to(device)
        rows += [corpus_docs, corpus_nb.reshape(-1, dims[0])]
    out = forward_stage(chain, trainable, s, torch.cat(rows))
    n_q, n_d = len(rows[0]), len(rows[1])
    # every level is a prefix of the first dims[s] coordinates: only those travel
    q, d = out[:n_q], gather_with_grad(out[n_q : n_q + n_d, : dims[s]], batch.doc_counts)
    rank = sum(graded_ranking_loss(q[:, :k], d[:, :k], labels, cfg.similarity_scale) for k in levels)
    if cfg.lookahead_weight:
        rank = rank + cfg.lookahead_weight * sum(
            graded_ranking_loss(q[:, :k], d[:, :k], labels, cfg.similarity_scale) for k in dims[s + 2:])
    pairs = torch.tensor(float(ranking_pair_count(batch.labels)), device=device)
    rank = rank * (n_proc * pairs / accelerator.reduce(pairs, "sum").clamp_min(1))
    if corpus is not None:
        n, k = corpus_nb.shape[:2]
        a, a_nb = out[-(n + n * k):-n * k], out[-n * k:].reshape(n, k, -1)
        rank = rank + settings.corpus_weight * corpus_structure_loss(corpus_docs, corpus_nb, a, a_nb, levels)
    unsup = torch.zeros((), device=device)
    if neighbours is not None:
        start = n_q + n_d
        ours = out[start : start + len(frozen)]
        theirs = out[start + len(frozen) : start + len(frozen) * (1 + neighbours.shape[1])].reshape(
            len(frozen), neighbours.shape[1], out.shape[1])
        if cfg.sxbm_target == "frozen":
            target = (frozen, neighbours)
        else:
            target = (ours[:, : levels[0]].detach(), theirs[:, :, : levels[0]].detach())
        unsup = similarity_preservation_loss(*target, ours[:, : levels[1]], theirs[:, :, : levels[1]], valid)
        pairs = valid.sum()
        unsup = unsup * (n_proc * pairs / accelerator.reduce(pairs, "sum").clamp_min(1))
    return StageLoss(rank + cfg.unsup_weight * unsup, rank, unsup)


def corpus_stage_loss(chain: SMECChain, trainable: torch.nn.Module, s: int, batch: CorpusBatch,
                      memory: SelectableCrossBatchMemory, settings: SMECSettings, accelerator: Accelerator) -> StageLoss:
    """Stage ``s``'s label-free loss on ``batch`` (this process's rows of the global batch): the corpus structure
    loss (each document's similarity to its frozen nearest documents and to its batch, :func:`corpus_structure_loss`)
    at the stage's levels, the lookahead levels weighted by ``lookahead_weight``, plus S-XBM's memory term at the
    smaller level with weight 1 (it is the same kind of term as the neighbour one, so no rebalancing against L_rank).

    Under DDP each process averages over its own rows and DDP averages the gradients, which equals the global mean
    when the shards are equal (they differ by at most one row).
    """
    cfg, dims, device = settings, chain.dims, accelerator.device
    levels = (dims[s], dims[s + 1])
    docs, neighbours = batch.docs.to(device), batch.neighbours.to(device)
    n, k = neighbours.shape[:2]
    memory_rows, valid = memory.select(docs) if cfg.use_sxbm and len(memory) else (None, None)
    rows = [docs, neighbours.reshape(-1, dims[0])] + ([memory_rows.reshape(-1, dims[0])] if memory_rows is not None
                                                       else [])
    out = forward_stage(chain, trainable, s, torch.cat(rows))
    a, a_nb = out[:n], out[n : n + n * k].reshape(n, k, -1)
    main = corpus_structure_loss(docs, neighbours, a, a_nb, levels)
    if cfg.lookahead_weight and dims[s + 2:]:
        main = main + cfg.lookahead_weight * corpus_structure_loss(docs, neighbours, a, a_nb, dims[s + 2:])
    unsup = torch.zeros((), device=device)
    if memory_rows is not None:
        theirs = out[n + n * k :].reshape(n, memory_rows.shape[1], -1)
        unsup = similarity_preservation_loss(docs, memory_rows, a[:, : levels[1]], theirs[:, :, : levels[1]], valid)
    return StageLoss(main + unsup, main, unsup)


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


HELD_OUT_LOSS_PAIRS = 512   # held-out pairs per block of the logged held-out loss: bounds its [pairs, candidates]


@torch.no_grad()
def held_out_loss(chain: SMECChain, n_stages: int, levels: tuple[int, ...], held: RankingExamples,
                  settings: SMECSettings) -> float:
    """Ranking loss on held-out queries with fixed candidates (their positives + top mined negatives), logged
    beside the held-out score. Computed over blocks of :data:`HELD_OUT_LOSS_PAIRS` pairs, each with its own
    candidates, and averaged by pairs, so its dense labels stay small however many queries are held out."""
    was_training = chain.training
    chain.eval()
    device = next(chain.parameters()).device
    total = 0.0
    for block in torch.arange(len(held.pairs)).split(HELD_OUT_LOSS_PAIRS):
        batch = held.batch(block, settings.hard_negatives, deterministic=True)
        q, d = chain(batch.queries.to(device), n_stages), chain(batch.docs.to(device), n_stages)
        labels = batch.labels.to(device)
        loss = sum(graded_ranking_loss(q[:, :k], d[:, :k], labels, settings.similarity_scale) for k in levels)
        total += float(loss) * len(block)
    chain.train(was_training)
    return total / max(len(held.pairs), 1)


def annealed(start: float, end: float, epoch: int, epochs: int) -> float:
    """The ADS temperature at ``epoch``: geometric from ``start`` to ``end`` over ``epochs``."""
    return start * (end / start) ** (epoch / max(epochs - 1, 1))
