"""Frozen baselines: prefix truncation and centred PCA fitted on the corpus (no labels, no training)."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..core.pca import PCA, fit_pca
from ..core.types import Qrels, check_dim


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
        self.pca: PCA | None = None

    def fit(self, cache, train_qrels: Qrels | None = None) -> "PCACompressor":
        """Fit on the cache's corpus (unsupervised: the qrels are ignored)."""
        self.pca = fit_pca(cache.corpus, self.max_fit_rows, self.seed)
        return self

    def transform(self, vectors: np.ndarray, dim: int) -> np.ndarray:
        check_dim(self.name, self.dims, dim)
        if self.pca is None:
            raise RuntimeError("PCACompressor.transform called before fit")
        return (np.asarray(vectors, dtype=np.float32) - self.pca.mean) @ self.pca.components[:dim].T
