"""The shared types: relevance judgements, the cached embeddings every method reads, the ``Compressor`` protocol.

They live at the bottom so that methods, evaluation and packaging agree on them without importing each other.
"""
from __future__ import annotations

from typing import Any, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np

Qrels = Mapping[str, Mapping[str, int]]          # query id -> document id -> graded relevance


class Embeddings(Protocol):
    """Frozen base vectors of a corpus and its queries (rows in id order); :class:`EmbeddingCache` is one."""

    corpus_ids: list[str]
    query_ids: list[str]
    corpus: np.ndarray        # [n_docs, dim], may be a read-only memmap
    queries: np.ndarray       # [n_queries, dim]
    meta: dict[str, Any]

    @property
    def dim(self) -> int: ...

    def doc_index(self) -> dict[str, int]: ...

    def query_index(self) -> dict[str, int]: ...


@runtime_checkable
class Compressor(Protocol):
    """Fit on cached embeddings (+ train qrels for supervised methods); map vectors to each supported dim."""

    name: str
    dims: Sequence[int]

    def fit(self, cache: Embeddings, train_qrels: Qrels) -> "Compressor": ...

    def transform(self, vectors: np.ndarray, dim: int) -> np.ndarray: ...


def check_dim(method: str, dims: Sequence[int], dim: int) -> None:
    if dim not in dims:
        raise ValueError(f"{method} was fitted for dims {list(dims)}; dim={dim} is not one of them")
