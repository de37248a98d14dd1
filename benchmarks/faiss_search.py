"""Top-10 search in FAISS, the index library users put these vectors into, at each dimension of the path.

Exact search per precision: float32 in ``IndexFlatIP`` (inner product of unit vectors = cosine; timed both on
FAISS's own path for the batch and with matrix products forced, which FAISS picks only for large batches), int8 in
``IndexScalarQuantizer`` (``QT_8bit``: one byte per dimension, per-dimension ranges trained on a corpus
sample; the float query is scored against the decoded codes), binary in ``IndexBinaryFlat`` (Hamming distance
of the packed sign bits, ST's ``ubinary``). Approximate search: ``IndexHNSWFlat`` per dimension (float32),
its build time, memory and recall@10 against the exact ``IndexFlatIP`` on the same vectors.
"""
from __future__ import annotations

import time
from collections.abc import Sequence

import faiss
import numpy as np
from sentence_transformers.util.quantization import quantize_embeddings

from .common import markdown_table, median_seconds
from .retrieval import K, PRECISIONS

HNSW_M = 32
HNSW_EF_CONSTRUCTION = 40   # FAISS's default
HNSW_EF_SEARCH = 64
CALIBRATION_ROWS = 100_000


def unit_prefix(corpus: np.ndarray, dim: int, rows: int | None = None) -> np.ndarray:
    """The first ``dim`` columns of the first ``rows`` rows of ``corpus``, renormalised: a Matryoshka prefix."""
    prefix = np.asarray(corpus[:rows, :dim], dtype=np.float32)
    return prefix / np.linalg.norm(prefix, axis=1, keepdims=True)


def noisy_queries(vectors: np.ndarray, n_queries: int, rng: np.random.Generator) -> np.ndarray:
    """Unit queries near ``n_queries`` random rows of ``vectors``, so each has one clear nearest document."""
    rows = np.sort(rng.choice(len(vectors), n_queries, replace=False))
    dim = vectors.shape[1]
    noise = 0.05 * rng.standard_normal((n_queries, dim), dtype=np.float32) / dim**0.5
    return unit_prefix(vectors[rows] + noise, dim)


def exact_index(vectors: np.ndarray, precision: str, calibration: np.ndarray) -> faiss.Index | faiss.IndexBinary:
    """A FAISS exact (brute-force) index over unit ``vectors`` in ``precision``; int8 ranges from ``calibration``."""
    dim = vectors.shape[1]
    if precision == "float32":
        index = faiss.IndexFlatIP(dim)
    elif precision == "int8":
        index = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
        index.train(calibration)
    elif precision == "binary":
        index = faiss.IndexBinaryFlat(dim)
        vectors = quantize_embeddings(vectors, "ubinary")
    else:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    index.add(vectors)
    return index


def search(index: faiss.Index | faiss.IndexBinary, queries: np.ndarray, blas: bool = False) -> np.ndarray:
    """Top-``K`` row ids per unit float query (packed to sign bits for a binary index).

    ``blas`` makes a flat float index score by matrix products whatever the batch: by default FAISS does so
    only when queries x dim >= ``distance_compute_blas_threshold`` (128,000 in FAISS 1.15: never for 64 queries
    here; older versions compared the query count with 20) and otherwise scans the whole index once per query.
    """
    if isinstance(index, faiss.IndexBinary):
        return index.search(quantize_embeddings(queries, "ubinary"), K)[1]
    threshold = faiss.cvar.distance_compute_blas_threshold
    faiss.cvar.distance_compute_blas_threshold = 0 if blas else threshold
    try:
        return index.search(queries, K)[1]
    finally:
        faiss.cvar.distance_compute_blas_threshold = threshold


def exact_speed(corpus: np.ndarray, dims: Sequence[int], n_queries: int, repeats: int, seed: int = 0) -> list[dict]:
    """Median batch search time and index size for every (dim, precision, path), speed-ups against ``dims[0]``.

    The path is FAISS's "default" choice, plus "BLAS" (forced matrix products) for float32.
    """
    rows = []
    for dim in dims:
        rng = np.random.default_rng(seed)
        vectors = unit_prefix(corpus, dim)
        queries = noisy_queries(vectors, n_queries, rng)
        calibration = vectors[np.sort(rng.choice(len(vectors), min(len(vectors), CALIBRATION_ROWS), replace=False))]
        for precision in PRECISIONS:
            index = exact_index(vectors, precision, calibration)
            for path in ("default", "BLAS") if precision == "float32" else ("default",):
                seconds = median_seconds(lambda: search(index, queries, blas=path == "BLAS"), repeats)
                rows.append({"dim": dim, "precision": precision, "path": path, "seconds": seconds,
                             "queries": n_queries, "bytes_per_vector": index.code_size,
                             "index_bytes": index.code_size * index.ntotal})
            del index
        del vectors, calibration
    full = {(r["precision"], r["path"]): r for r in rows if r["dim"] == dims[0]}
    for row in rows:
        row["speedup"] = full[(row["precision"], row["path"])]["seconds"] / row["seconds"]
        row["ideal_speedup"] = dims[0] / row["dim"]
        row["of_ideal"] = row["speedup"] / row["ideal_speedup"]
        row["target_met"] = row["of_ideal"] >= 0.8 if row["precision"] == "float32" else None
    return rows


def hnsw_memory_bytes(index: faiss.IndexHNSWFlat) -> int:
    """The vectors plus the graph (neighbour lists, their offsets, node levels): ``serialize_index`` less headers."""
    graph = index.hnsw
    return (index.storage.sa_code_size() * index.ntotal + 4 * graph.neighbors.size() + 8 * graph.offsets.size()
            + 4 * graph.levels.size())


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean share of each query's exact top-k (k = ``exact``'s columns) that ``found`` returns too."""
    return float(np.mean([len(set(f) & set(e)) / len(e) for f, e in zip(found.tolist(), exact.tolist())]))


def hnsw_table(corpus: np.ndarray, dims: Sequence[int], n_docs: int, n_queries: int, repeats: int,
               seed: int = 0) -> list[dict]:
    """Per dim: ``IndexHNSWFlat`` build seconds, memory, recall@10 against exact search and query time."""
    rows = []
    for dim in dims:
        rng = np.random.default_rng(seed)
        vectors = unit_prefix(corpus, dim, n_docs)
        queries = noisy_queries(vectors, n_queries, rng)
        exact = search(exact_index(vectors, "float32", vectors), queries)
        index = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        start = time.perf_counter()
        index.add(vectors)
        build = time.perf_counter() - start
        index.hnsw.efSearch = HNSW_EF_SEARCH
        found = search(index, queries)
        # recall@1 too: on random vectors the exact 2nd..10th neighbours are barely nearer than the rest
        rows.append({"dim": dim, "docs": len(vectors), "build_s": build, "memory_bytes": hnsw_memory_bytes(index),
                     "recall@10": recall_at_k(found, exact), "recall@1": recall_at_k(found[:, :1], exact[:, :1]),
                     "queries": n_queries,
                     "seconds": median_seconds(lambda: search(index, queries), repeats)})
        del index, vectors
    return rows


def faiss_report(corpus: np.ndarray, dims: Sequence[int], n_queries: int, repeats: int, hnsw_docs: int,
                 threads: int) -> dict:
    """The FAISS section of ``make bench``: exact search on all of ``corpus``, HNSW on its first ``hnsw_docs``.

    FAISS runs on ``threads`` OpenMP threads (the torch table's count, so the two compare).
    """
    faiss.omp_set_num_threads(threads)
    return {"faiss": faiss.__version__, "threads": threads, "docs": len(corpus), "k": K,
            "blas_threshold": faiss.cvar.distance_compute_blas_threshold,
            "queries": n_queries, "exact": exact_speed(corpus, dims, n_queries, repeats),
            "hnsw": {"M": HNSW_M, "efConstruction": HNSW_EF_CONSTRUCTION, "efSearch": HNSW_EF_SEARCH,
                     "rows": hnsw_table(corpus, dims, min(hnsw_docs, len(corpus)), n_queries, repeats)}}


def format_faiss(section: dict) -> list[str]:
    """The FAISS tables of ``bench.md``."""
    h = section["hnsw"]
    return [
        f"FAISS {section['faiss']} exact top-{section['k']} search ({section['threads']} OpenMP threads), "
        f"{section['queries']} queries in one batch over {section['docs']:,} synthetic unit vectors (prefixes); "
        "float32 IndexFlatIP, int8 IndexScalarQuantizer QT_8bit, binary IndexBinaryFlat. Path: default = FAISS's "
        f"own choice (distance_compute_blas_threshold = {section['blas_threshold']:,}: in FAISS 1.15 a scan "
        "of the index per query while queries x dim is below it), BLAS = matrix products forced (threshold 0). "
        "Target: float32 speed-up >= 0.8 x ideal (D/k):",
        markdown_table(
            ["dim", "precision", "path", "bytes / vector", "index MiB", "batch ms", "ms / query", "speed-up",
             "ideal", "of ideal", "target"],
            [[r["dim"], r["precision"], r["path"], r["bytes_per_vector"], f"{r['index_bytes'] / 2**20:,.1f}",
              f"{1000 * r['seconds']:.0f}", f"{1000 * r['seconds'] / r['queries']:.2f}", f"{r['speedup']:.1f}x",
              f"{r['ideal_speedup']:.1f}x", f"{100 * r['of_ideal']:.0f}%",
              "" if r["target_met"] is None else ("met" if r["target_met"] else "not met")]
             for r in section["exact"]]), "",
        f"FAISS IndexHNSWFlat (float32, inner product; M={h['M']}, efConstruction={h['efConstruction']}, "
        f"efSearch={h['efSearch']}) on the first {h['rows'][0]['docs']:,} synthetic vectors, recall@10 against "
        "exact IndexFlatIP on the same vectors (random unit vectors: HNSW's hardest case at high dimension):",
        markdown_table(
            ["dim", "build s", "memory MiB", "bytes / vector", "recall@10", "recall@1", "ms / query"],
            [[r["dim"], f"{r['build_s']:.1f}", f"{r['memory_bytes'] / 2**20:,.1f}",
              f"{r['memory_bytes'] / r['docs']:,.0f}", f"{r['recall@10']:.3f}", f"{r['recall@1']:.3f}",
              f"{1000 * r['seconds'] / r['queries']:.3f}"] for r in h["rows"]])]
