"""The frozen nearest documents of many queries, computed once per run: exact below a corpus size, FAISS IVF above.

Mining hard negatives and fixing each held-out query's candidate set both need every train query's top documents
under the *frozen* vectors. An exact scan costs O(queries x documents x dim), which at a million documents and
twenty thousand queries is hours on a CPU; an inverted-file index with 8-bit scalar-quantised codes (FAISS'
``IndexIVFScalarQuantizer``) visits a few percent of the corpus per query and holds a quarter of its bytes. Hard
negatives and candidate sets need the near neighbourhood, not the exact order, so the approximation is harmless
there; below ``exact_max_docs`` the exact scan is cheap and is kept, so small corpora get the same results as ever.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from .retrieval import cosine_top_k, rows_as_tensor

QUERY_CHUNK = 1024          # queries per exact scan: bounds the [queries, 65,536-document] score block to 256 MiB
ADD_CHUNK = 65536           # corpus rows normalised and added to the index at a time (the corpus may be a memmap)
TRAIN_POINTS_PER_LIST = 40  # k-means sample per inverted list (FAISS warns below 39)
LISTS_PER_PROBE = 32        # one list in this many is visited per query


def frozen_top_k(queries: np.ndarray | torch.Tensor, corpus: np.ndarray, k: int, exact_max_docs: int,
                 seed: int = 0) -> np.ndarray:
    """``[n_queries, k]`` corpus rows nearest each query by cosine (int64, best first; ``k`` is capped at the
    corpus size): exact for corpora of at most ``exact_max_docs`` documents, an IVF index above."""
    k = min(k, len(corpus))
    queries = torch.as_tensor(np.asarray(queries, dtype=np.float32))
    if len(corpus) <= exact_max_docs:
        return np.concatenate([cosine_top_k(part, corpus, k=k)[1].numpy()
                               for part in queries.split(QUERY_CHUNK)]) if len(queries) else np.zeros((0, k), np.int64)
    return _ivf_top_k(queries, corpus, k, seed)


def _ivf_top_k(queries: torch.Tensor, corpus: np.ndarray, k: int, seed: int) -> np.ndarray:
    import faiss   # deferred: only corpora above the exact size need it

    n, dim = corpus.shape
    n_lists = max(1, min(int(math.sqrt(n)), n // TRAIN_POINTS_PER_LIST))
    index = faiss.IndexIVFScalarQuantizer(faiss.IndexFlatIP(dim), dim, n_lists, faiss.ScalarQuantizer.QT_8bit,
                                          faiss.METRIC_INNER_PRODUCT)
    sample = np.sort(np.random.default_rng(seed).choice(n, min(n, n_lists * TRAIN_POINTS_PER_LIST), replace=False))
    index.train(_unit(rows_as_tensor(corpus, sample)))
    for start in range(0, n, ADD_CHUNK):
        index.add(_unit(rows_as_tensor(corpus, slice(start, start + ADD_CHUNK))))
    index.nprobe = max(1, n_lists // LISTS_PER_PROBE)
    _, rows = index.search(_unit(queries), k)
    return rows.astype(np.int64)


def _unit(x: torch.Tensor) -> np.ndarray:
    """Rows scaled to unit length (inner product = cosine), as the contiguous float32 array FAISS takes."""
    return np.ascontiguousarray(torch.nn.functional.normalize(x.float(), dim=-1).numpy())


@dataclass(frozen=True)
class CandidateSet:
    """Fixed candidate documents per probe (a held-out query): ``rows`` the sorted union of corpus rows, and one
    entry per (probe, candidate) pair, ``pair_probe`` and ``pair_slot`` (an index into ``rows``), sorted by slot so
    a scorer can stream ``rows`` in chunks and score each chunk's pairs."""

    rows: np.ndarray         # [U] int64 corpus rows
    pair_probe: np.ndarray   # [P] int64
    pair_slot: np.ndarray    # [P] int64 index into rows, non-decreasing

    @classmethod
    def build(cls, top: np.ndarray, extra: Sequence[Sequence[int]]) -> "CandidateSet":
        """Probe ``i``'s candidates: the rows of ``top[i]`` (-1 = none) and of ``extra[i]``, without repeats."""
        per_probe = [np.unique(np.concatenate([np.asarray(t, dtype=np.int64), np.asarray(e, dtype=np.int64)]))
                     for t, e in zip(top, extra)]
        per_probe = [p[p >= 0] for p in per_probe]
        probe = np.repeat(np.arange(len(per_probe)), [len(p) for p in per_probe])
        flat = np.concatenate(per_probe) if per_probe else np.zeros(0, np.int64)
        rows, slot = np.unique(flat, return_inverse=True)
        order = np.argsort(slot, kind="stable")
        return cls(rows, probe[order], slot[order])
