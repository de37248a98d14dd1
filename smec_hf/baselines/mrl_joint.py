"""``mrl_joint``: SMEC's head trained the MRL way, jointly at every dimension (the ablation table's "MRL" row).

One general affine map D -> D, PCA-initialised like SMEC's first stage, trained on the sum of the
ranking loss at every prefix of the dimension path at once, with SMEC's batches, negatives, loss
scale, optimiser settings and early stopping (mean held-out nDCG@10 over the dims). What it lacks
is exactly what SMEC adds: sequential stages, ADS and S-XBM.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..config import SMECTrainingConfig
from ..method.losses import graded_ranking_loss
from ..method.batches import Batch
from ._supervised import RankingSetup, Schedule, make_basis, train_early_stopped
from .base import Qrels, check_dim


class MRLJointCompressor:
    """A single linear head whose every prefix in ``dims`` is trained at the same time."""

    name = "mrl_joint"

    def __init__(self, dims: Sequence[int], config: SMECTrainingConfig | None = None,
                 schedule: Schedule | None = None, show_progress_bar: bool = True) -> None:
        self.dims = list(dims)
        self.config = config or SMECTrainingConfig(dims=self.dims)
        self.schedule = schedule or Schedule()
        self.show_progress_bar = show_progress_bar
        self.head: nn.Linear | None = None
        self.log: dict = {}

    def fit(self, cache, train_qrels: Qrels) -> "MRLJointCompressor":
        if self.dims[0] != cache.dim:
            raise ValueError(f"dims must start at the embedding dimension {cache.dim}, got {self.dims}")
        cfg = self.config
        torch.manual_seed(cfg.seed)
        setup = RankingSetup.build(cache, train_qrels, cfg)
        head = nn.Linear(cache.dim, cache.dim)
        with torch.no_grad():
            weight, bias = make_basis(cache, "pca" if cfg.pca_init else "identity")
            head.weight.copy_(weight)
            head.bias.copy_(bias)

        def loss_fn(batch: Batch, generator: torch.Generator) -> torch.Tensor:
            q, d = head(batch.queries), head(batch.docs)
            return sum(graded_ranking_loss(q[:, :k], d[:, :k], batch.labels, cfg.similarity_scale) for k in self.dims)

        optimizer = torch.optim.Adam(head.parameters(), lr=cfg.lr)
        self.log = train_early_stopped(
            head, optimizer, lambda g: setup.epoch_batches(cfg, g), loss_fn,
            lambda: setup.held_out_mean(head, self.dims), cfg, self.schedule,
            desc=self.name, show_progress_bar=self.show_progress_bar)
        self.head = head.requires_grad_(False)
        return self

    def transform(self, vectors: np.ndarray, dim: int) -> np.ndarray:
        check_dim(self.name, self.dims, dim)
        if self.head is None:
            raise RuntimeError("MRLJointCompressor.transform called before fit")
        x = torch.from_numpy(np.array(vectors, dtype=np.float32))
        return (x @ self.head.weight[:dim].T + self.head.bias[:dim]).numpy()
