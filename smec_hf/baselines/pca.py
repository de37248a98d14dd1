"""Frozen baselines: prefix truncation and centred PCA fitted on the corpus."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .base import Qrels, check_dim


class TruncationCompressor:
    """Keep the first ``dim`` coordinates: the right baseline for encoders trained with MRL."""

    name = "truncation"

    def __init__(self, dims: Sequence[int]) -> None:
        self.dims = list(dims)

    def fit(self, cache, train_qrels: Qrels | None = None) -> "TruncationCompressor":
        return self

    def transform(self, vectors: np.ndarray, dim: int) -> np.ndarray:
        check_dim(self.name, self.dims, dim)
        return np.asarray(vectors[:, :dim], dtype=np.float32)


class PCACompressor:
    """Project centred vectors on the corpus's top principal components (the baseline for non-MRL encoders)."""

    name = "pca"

    def __init__(self, dims: Sequence[int], max_fit_rows: int = 200_000, seed: int = 0) -> None:
        self.dims = list(dims)
        self.max_fit_rows = max_fit_rows
        self.seed = seed
        self.mean: np.ndarray | None = None
        self.components: np.ndarray | None = None   # [D, D], rows ordered by explained variance

    def fit(self, cache, train_qrels: Qrels | None = None) -> "PCACompressor":
        """Fit on the cache's corpus (unsupervised: the qrels are ignored)."""
        return self.fit_vectors(cache.corpus)

    def fit_vectors(self, corpus: np.ndarray) -> "PCACompressor":
        """Fit on (a deterministic sample of at most ``max_fit_rows``) rows; memmaps are fine."""
        rows = np.arange(len(corpus))
        if len(rows) > self.max_fit_rows:
            rows = np.sort(np.random.default_rng(self.seed).choice(rows, self.max_fit_rows, replace=False))
        x = torch.as_tensor(np.asarray(corpus[rows]), dtype=torch.float64)
        mean = x.mean(dim=0)
        cov = (x - mean).T @ (x - mean) / max(len(x) - 1, 1)
        eigenvalues, eigenvectors = torch.linalg.eigh(cov)
        order = eigenvalues.argsort(descending=True)
        self.mean = mean.numpy().astype(np.float32)
        components = eigenvectors[:, order].T
        # eigh's signs depend on the BLAS thread count: fix each component's sign (largest entry positive)
        # so the same data gives the same PCA, and the same PCA-initialised SMEC head, on any machine
        signs = torch.sign(components.gather(1, components.abs().argmax(dim=1, keepdim=True)))
        self.components = (components * signs).numpy().astype(np.float32)
        self.explained_variance = eigenvalues[order].numpy()
        return self

    def transform(self, vectors: np.ndarray, dim: int) -> np.ndarray:
        check_dim(self.name, self.dims, dim)
        if self.components is None:
            raise RuntimeError("PCACompressor.transform called before fit")
        return (np.asarray(vectors, dtype=np.float32) - self.mean) @ self.components[:dim].T
