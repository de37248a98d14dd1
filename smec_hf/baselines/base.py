"""The one small interface every compression method shares, so evaluation has no per-method branches."""
from __future__ import annotations

from typing import TYPE_CHECKING, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from ..data.cache import EmbeddingCache

Qrels = Mapping[str, Mapping[str, int]]


@runtime_checkable
class Compressor(Protocol):
    """Fit on cached embeddings (+ train qrels for supervised methods); map vectors to each supported dim."""

    name: str
    dims: Sequence[int]

    def fit(self, cache: "EmbeddingCache", train_qrels: Qrels) -> "Compressor": ...

    def transform(self, vectors: np.ndarray, dim: int) -> np.ndarray: ...


def check_dim(method: str, dims: Sequence[int], dim: int) -> None:
    if dim not in dims:
        raise ValueError(f"{method} was fitted for dims {list(dims)}; dim={dim} is not one of them")
