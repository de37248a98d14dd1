"""Exact top-10 search: time and index bytes at each dimension of the path, stacked with int8 / binary quantization.

Quantization is ``sentence_transformers``' own (``quantize_embeddings``: int8 with per-dimension ranges
calibrated on the corpus, binary as packed sign bits). Scoring follows ST's usearch path: inner product of
the int8 codes, Hamming distance of the bits; no rescoring. The search is exact within each representation:
float32 by BLAS matrix products, int8 by int8 matrix products (``torch._int_mm``), binary by unpacking each
block of stored bits to +-1 and the same int8 product (Hamming = (dim - s.t) / 2) — all brute force in
blocks, with no index library; the index stays packed, one bit per dimension.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from sentence_transformers.util.quantization import quantize_embeddings

from smec_hf.core.retrieval import ndcg_at_10

from .common import median_seconds

K = 10
BLOCK = 65536
PRECISIONS = ("float32", "int8", "binary")


def encode_index(vectors: np.ndarray, precision: str, calibration: np.ndarray) -> np.ndarray:
    """The stored representation of unit-normalised ``vectors`` in ``precision``."""
    if precision == "float32":
        return np.ascontiguousarray(vectors, dtype=np.float32)
    if precision == "int8":
        return quantize_embeddings(vectors, "int8", calibration_embeddings=calibration)
    return quantize_embeddings(vectors, "ubinary")


def _signs(bits: np.ndarray) -> np.ndarray:
    """Packed bits as int8 +-1, the form whose inner product gives the Hamming distance."""
    signs = np.unpackbits(bits, axis=1).view(np.int8)
    signs *= 2
    signs -= 1
    return signs


def _merge(best: tuple[torch.Tensor, torch.Tensor] | None, scores: torch.Tensor, offset: int):
    """The running top-``K`` (largest scores) after one more block of ``scores [queries, block]``."""
    top = scores.topk(min(K, scores.shape[1]), dim=1)
    values, index = top.values, top.indices + offset
    if best is not None:
        values, index = torch.cat([best[0], values], 1), torch.cat([best[1], index], 1)
        keep = values.topk(min(K, values.shape[1]), dim=1)
        values, index = keep.values, index.gather(1, keep.indices)
    return values, index


def search(index: np.ndarray, queries: np.ndarray, precision: str) -> torch.Tensor:
    """Exact top-``K`` row indices per query (queries in the index's representation)."""
    best = None
    q = torch.from_numpy(_signs(queries) if precision == "binary" else queries)
    q_t = q.T.contiguous()
    for start in range(0, len(index), BLOCK):
        block = index[start:start + BLOCK]
        if precision == "float32":
            scores = q @ torch.from_numpy(block).T
        else:
            codes = torch.from_numpy(_signs(block) if precision == "binary" else block)
            scores = torch._int_mm(codes, q_t).T
        best = _merge(best, scores, start)
    return best[1]


def search_speed(corpus: np.ndarray, dims: Sequence[int], n_queries: int, repeats: int, seed: int = 0) -> list[dict]:
    """Median search time and index bytes for every (dim, precision) over the prefixes of ``corpus``."""
    rng = np.random.default_rng(seed)
    query_rows = np.sort(rng.choice(len(corpus), n_queries, replace=False))
    calibration_rows = np.sort(rng.choice(len(corpus), min(len(corpus), 100_000), replace=False))
    rows = []
    for dim in dims:
        vectors = F.normalize(torch.from_numpy(np.asarray(corpus[:, :dim])), dim=1).numpy()
        queries = vectors[query_rows] + 0.05 * rng.standard_normal((n_queries, dim), dtype=np.float32) / dim**0.5
        for precision in PRECISIONS:
            index = encode_index(vectors, precision, vectors[calibration_rows])
            encoded = encode_index(queries, precision, vectors[calibration_rows])
            seconds = median_seconds(lambda: search(index, encoded, precision), repeats)
            rows.append({"dim": dim, "precision": precision, "seconds": seconds, "index_bytes": int(index.nbytes)})
            del index
        del vectors
    return rows


def quantized_ndcg(corpus: np.ndarray, queries: np.ndarray, doc_ids: Sequence[str], query_ids: Sequence[str],
                   qrels: Mapping[str, Mapping[str, int]], precision: str) -> float:
    """nDCG@10 of exact search in ``precision`` (int8 ranges calibrated on the corpus)."""
    corpus = F.normalize(torch.from_numpy(np.asarray(corpus, dtype=np.float32)), dim=1).numpy()
    queries = F.normalize(torch.from_numpy(np.asarray(queries, dtype=np.float32)), dim=1).numpy()
    top = search(encode_index(corpus, precision, corpus), encode_index(queries, precision, corpus), precision)
    run = {q: {doc_ids[j]: float(K - r) for r, j in enumerate(row.tolist())} for q, row in zip(query_ids, top)}
    return ndcg_at_10(run, {q: qrels[q] for q in query_ids})


def ndcg_table(transform: Callable[[np.ndarray, int], np.ndarray], cache, qrels, dims: Sequence[int]) -> list[dict]:
    """nDCG@10 on ``qrels``' queries for every (dim, precision), vectors mapped by ``transform(x, dim)``."""
    q_index = cache.query_index()
    query_ids = [q for q in qrels if q in q_index]
    raw_queries = np.asarray(cache.queries[[q_index[q] for q in query_ids]], dtype=np.float32)
    rows = []
    for dim in dims:
        corpus, queries = transform(np.asarray(cache.corpus), dim), transform(raw_queries, dim)
        for precision in PRECISIONS:
            rows.append({"dim": dim, "precision": precision,
                         "ndcg@10": quantized_ndcg(corpus, queries, cache.corpus_ids, query_ids, qrels, precision)})
    return rows
