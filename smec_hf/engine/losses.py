"""The losses every trained method draws on: graded pairwise ranking (L_rank) and similarity preservation
(S-XBM's memory term and the label-free corpus terms).

Both are *means* over their valid pairs rather than the paper's raw sums, so their balance does not
drift with the batch size, the number of negatives or the memory's K. The paper's weight 0.1 on sums
corresponds to about 0.002 on these means for our default batch (see ``SMECSettings.unsup_weight``).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F


def cosine_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T


def graded_ranking_loss(queries: torch.Tensor, docs: torch.Tensor, labels: torch.Tensor,
                        scale: float = 1.0) -> torch.Tensor:
    """``mean over (i, j, k) with y_ij > y_ik of (y_ij - y_ik) * log(1 + exp(scale * (s_ik - s_ij)))``.

    ``queries [B, d]`` and ``docs [M, d]`` are embeddings at one dimension, ``labels [B, M]`` the graded
    relevance of every candidate for every query (0 = not relevant), ``s`` the cosine similarity.
    ``scale`` multiplies the cosines: with ``scale = 1`` (the paper's form) cosines in [-1, 1] give the
    logistic loss only a narrow range, so gradients are tiny; see ``FitConfig.similarity_scale``.
    The mean is weighted by ``y_ij - y_ik`` and divided by the number of ordered pairs.
    """
    sims = scale * cosine_matrix(queries, docs)
    n_top = int((labels > 0).sum(dim=1).max().item()) if labels.numel() else 0
    if n_top == 0:
        return sims.sum() * 0.0
    top_labels, top_index = labels.topk(n_top, dim=1)                   # the relevant candidates [B, P]
    top_sims = sims.gather(1, top_index)
    weight = (top_labels[:, :, None] - labels[:, None, :]).clamp_min(0)  # y_ij - y_ik where positive [B, P, M]
    pair_loss = F.softplus(sims[:, None, :] - top_sims[:, :, None])
    return (weight * pair_loss).sum() / (weight > 0).sum().clamp_min(1)


def similarity_preservation_loss(full: torch.Tensor, full_neighbours: torch.Tensor, compressed: torch.Tensor,
                                 compressed_neighbours: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``mean over selected pairs of |cos(e_i, e_j) - cos(c_i, c_j)|`` (the S-XBM loss).

    ``full [B, D]`` / ``full_neighbours [B, K, D]`` are frozen full-dim embeddings of the batch and of
    its selected memory entries; ``compressed [B, d]`` / ``compressed_neighbours [B, K, d]`` are the
    current head's compressed embeddings of the same; ``valid [B, K]`` masks empty slots.
    """
    target = torch.einsum("bd,bkd->bk", F.normalize(full, dim=-1), F.normalize(full_neighbours, dim=-1))
    pred = torch.einsum("bd,bkd->bk", F.normalize(compressed, dim=-1), F.normalize(compressed_neighbours, dim=-1))
    diff = (target - pred).abs() * valid
    return diff.sum() / valid.sum().clamp_min(1)


def ranking_pair_count(labels: torch.Tensor) -> int:
    """How many ordered pairs ``y_ij > y_ik`` :func:`graded_ranking_loss` averages over (its denominator)."""
    if not labels.numel():
        return 0
    ordered = labels.sort(dim=1).values
    return int(torch.searchsorted(ordered, labels, side="left").sum())


def pairwise_similarity_loss(full: torch.Tensor, compressed: torch.Tensor) -> torch.Tensor:
    """``mean over all pairs (i, j) of a batch of |cos(e_i, e_j) - cos(c_i, c_j)|`` (Matryoshka-Adaptor's L_pair)."""
    return (cosine_matrix(full, full) - cosine_matrix(compressed, compressed)).abs().mean()


def corpus_structure_loss(full: torch.Tensor, full_neighbours: torch.Tensor, compressed: torch.Tensor,
                          compressed_neighbours: torch.Tensor, dims: Sequence[int],
                          pair_weight: float = 1.0) -> torch.Tensor:
    """The label-free loss: at every dim in ``dims``, keep the frozen full-dim similarities of each document to its
    nearest documents (L_topk) and to the rest of its batch (L_pair, weighted by ``pair_weight``).

    ``full [B, D]`` / ``full_neighbours [B, K, D]`` are frozen; ``compressed`` / ``compressed_neighbours`` the
    model's outputs for the same rows, of which the first ``k`` coordinates are the k-dim embedding. The one
    definition Matryoshka-Adaptor's unsupervised terms and SMEC's corpus-only training share.
    """
    valid = torch.ones(full_neighbours.shape[:2], dtype=torch.bool, device=full.device)
    loss = full.new_zeros(())
    for k in dims:
        loss = loss + similarity_preservation_loss(full, full_neighbours, compressed[:, :k],
                                                   compressed_neighbours[:, :, :k], valid)
        loss = loss + pair_weight * pairwise_similarity_loss(full, compressed[:, :k])
    return loss
