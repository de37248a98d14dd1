"""Search-Adaptor (Yoon et al., 2024) as SMEC's comparison uses it: one residual adapter per target dimension.

For each ``k`` in the dimension path an adapter ``x -> z[:k] + f_k(z)`` (``z``: the input in a fixed
basis, ``f_k``: a shallow MLP with a ``k``-dim, zero-initialised output) is trained on its own, with the
paper's loss ``L_rank + alpha * L_rec + beta * L_pred``:

* ``L_rank``: the graded pairwise ranking loss at ``k`` (SMEC's batches, negatives and scale);
* ``L_rec`` (recovery): the L1 size of the residual ``f_k(z)``, which keeps the adapter near its start;
* ``L_pred`` (prediction): a training-time query predictor ``p_k`` maps each adapted relevant document
  to the frozen embedding of its query; its L1 error, weighted by the relevance grade. The paper does
  not say which query embedding is predicted; the frozen one cannot collapse with the adapter.

Each adapter is early-stopped on held-out train queries at its own ``k``. The predictor is discarded.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..core.config import FitConfig
from ..core.types import Embeddings, Qrels, check_dim
from ..data.examples import Batch, TrainingExamples
from ..engine.loop import Schedule
from ..engine.losses import graded_ranking_loss
from .adaptors import BasisAdaptor, ResidualMLP, fit_baseline, make_basis, mean_held_out_ndcg, ranking_batches, start_fit


class SearchAdaptorCompressor:
    """One independently trained ``k``-dim adapter per ``k`` in ``dims``."""

    name = "search_adaptor"

    def __init__(self, dims: Sequence[int], config: FitConfig | None = None,
                 schedule: Schedule | None = None, *, hidden: int = 512,
                 alpha: float = 0.01, beta: float = 0.01, basis: str = "pca", show_progress_bar: bool = True) -> None:
        """``alpha`` / ``beta``: weights of the recovery / prediction regularisers. The paper tunes each over three
        values on validation; ours come from alpha = beta in {0.01, 0.1, 1} on held-out SciFact train queries with
        MiniLM (mean nDCG@10 over the dims 0.863 / 0.827 / 0.776; with both off, 0.858); ``basis``: "pca" (as for
        Matryoshka-Adaptor) or "identity", see :class:`~smec_hf.baselines.adaptors.BasisAdaptor`."""
        bad = [f"{n}={v!r}" for n, v, good in (("hidden", hidden, hidden >= 1), ("alpha", alpha, alpha >= 0),
                                                ("beta", beta, beta >= 0)) if not good]
        if bad:
            raise ValueError("invalid Search-Adaptor setting: " + ", ".join(bad))
        self.dims = list(dims)
        self.config = config or FitConfig(dims=self.dims)
        self.schedule = schedule or Schedule()
        self.hidden, self.alpha, self.beta, self.basis = hidden, alpha, beta, basis
        self.show_progress_bar = show_progress_bar
        self.adaptors: dict[int, BasisAdaptor] = {}
        self.log: dict = {}

    def fit(self, cache: Embeddings, train_qrels: Qrels) -> "SearchAdaptorCompressor":
        cfg = self.config
        examples = start_fit(cache, train_qrels, cfg, self.dims)
        basis = make_basis(cache, self.basis)
        for i, k in enumerate(self.dims):
            torch.manual_seed(cfg.seed + i)
            self.adaptors[k], self.log[k] = self._fit_one(examples, basis, k, i)
        return self

    def _fit_one(self, examples: TrainingExamples, basis: tuple[torch.Tensor, torch.Tensor], k: int,
                 index: int) -> tuple[BasisAdaptor, dict]:
        cfg = self.config
        adaptor = BasisAdaptor(ResidualMLP(examples.cache.dim, self.hidden, out=k), *basis)
        predictor = nn.Linear(k, examples.cache.dim)
        both = nn.ModuleList([adaptor, predictor])

        def loss_fn(batch: Batch, generator: torch.Generator) -> torch.Tensor:
            zq, zd = adaptor.project(batch.queries), adaptor.project(batch.docs)
            rq, rd = adaptor.mlp.residual(zq), adaptor.mlp.residual(zd)
            q, d = zq[:, :k] + rq, zd[:, :k] + rd
            rank = graded_ranking_loss(q, d, batch.labels, cfg.similarity_scale)
            recovery = torch.cat([rq, rd]).abs().mean()
            qi, dj = batch.labels.nonzero(as_tuple=True)
            grade = batch.labels[qi, dj]
            error = (predictor(d[dj]) - batch.queries[qi]).abs().mean(dim=1)
            prediction = (grade * error).sum() / grade.sum().clamp_min(1e-12)
            return rank + self.alpha * recovery + self.beta * prediction

        optimizer = torch.optim.Adam(both.parameters(), lr=cfg.lr)
        log = fit_baseline(both, optimizer, ranking_batches(examples, cfg), loss_fn,
                           mean_held_out_ndcg(examples, adaptor, [k]), cfg, self.schedule,
                           desc=f"{self.name} {k}-d", show_progress_bar=self.show_progress_bar, seed_offset=index)
        return adaptor.requires_grad_(False).eval(), log

    def transform(self, vectors: np.ndarray, dim: int) -> np.ndarray:
        check_dim(self.name, self.dims, dim)
        if dim not in self.adaptors:
            raise RuntimeError("SearchAdaptorCompressor.transform called before fit")
        with torch.no_grad():
            return self.adaptors[dim](torch.from_numpy(np.array(vectors, dtype=np.float32))).numpy()
