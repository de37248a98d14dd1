"""Centred PCA of a corpus: the PCA baseline, and the fixed basis SMEC's stage 1 and the adaptors start from."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class PCA:
    """``z = (x - mean) @ components.T``; ``components`` rows ordered by explained variance."""

    mean: np.ndarray          # [D] float32
    components: np.ndarray    # [D, D] float32

    def affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The projection as an affine map ``z = x @ weight.T + bias``."""
        weight = torch.as_tensor(self.components)
        return weight, -weight @ torch.as_tensor(self.mean)


def fit_pca(corpus: np.ndarray, max_rows: int = 200_000, seed: int = 0, chunk_rows: int = 16384) -> PCA:
    """Fit on (a deterministic sample of at most ``max_rows``) rows of ``corpus``; memmaps are fine.

    The sample is read ``chunk_rows`` at a time, accumulating its mean and covariance in float64 twice over (so
    that centring happens before the products, as in one pass over centred data), so memory is O(D^2) however
    large the sample: a 200k x 4096 sample in float64 alone would be 6.5 GB.
    """
    rows = np.arange(len(corpus))
    if len(rows) > max_rows:
        rows = np.sort(np.random.default_rng(seed).choice(rows, max_rows, replace=False))
    chunks = [rows[i:i + chunk_rows] for i in range(0, len(rows), chunk_rows)]

    def read(part: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(corpus[part]), dtype=torch.float64)

    mean = sum(read(part).sum(dim=0) for part in chunks) / len(rows)
    cov = sum((x := read(part) - mean).T @ x for part in chunks) / max(len(rows) - 1, 1)
    eigenvalues, eigenvectors = torch.linalg.eigh(cov)
    components = eigenvectors[:, eigenvalues.argsort(descending=True)].T
    # eigh's signs depend on the BLAS thread count: fix each component's sign (largest entry positive)
    # so the same data gives the same PCA, and the same PCA-initialised heads, on any machine
    signs = torch.sign(components.gather(1, components.abs().argmax(dim=1, keepdim=True)))
    return PCA(mean.numpy().astype(np.float32), (components * signs).numpy().astype(np.float32))
