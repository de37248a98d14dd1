"""The FAISS benchmark's indexes return the right neighbours, and its tables carry the right sizes (not its timings)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

faiss = pytest.importorskip("faiss")

from benchmarks.faiss_search import (  # noqa: E402
    exact_index, exact_speed, faiss_report, format_faiss, hnsw_memory_bytes, hnsw_table, noisy_queries, recall_at_k,
    search, unit_prefix)
from smec_hf.core.retrieval import cosine_top_k  # noqa: E402


def random_unit(n: int, dim: int, seed: int = 0) -> np.ndarray:
    return F.normalize(torch.randn(n, dim, generator=torch.Generator().manual_seed(seed)), dim=1).numpy()


def test_flat_ip_top10_is_the_torch_exact_top10():
    docs = random_unit(5000, 64)
    queries = noisy_queries(docs, 16, np.random.default_rng(0))
    index = exact_index(docs, "float32", docs)
    threshold = faiss.cvar.distance_compute_blas_threshold
    torch_top = cosine_top_k(torch.from_numpy(queries), docs, k=10)[1].numpy()
    assert np.array_equal(search(index, queries), torch_top)
    assert np.array_equal(search(index, queries, blas=True), torch_top)
    assert faiss.cvar.distance_compute_blas_threshold == threshold   # restored after the forced-BLAS search


def test_binary_index_returns_the_smallest_hamming_distances():
    docs = random_unit(3000, 64, seed=1)
    queries = noisy_queries(docs, 8, np.random.default_rng(1))
    index = exact_index(docs, "binary", docs)
    distances, _ = index.search(np.packbits(queries > 0, axis=1), 10)
    hamming = (queries[:, None, :] > 0) != (docs[None, :, :] > 0)
    assert np.array_equal(distances, np.sort(hamming.sum(-1), axis=1)[:, :10])
    assert index.code_size == 8


def test_int8_index_keeps_most_of_the_exact_neighbours():
    docs = random_unit(5000, 64, seed=2)
    queries = noisy_queries(docs, 16, np.random.default_rng(2))
    exact = search(exact_index(docs, "float32", docs), queries)
    int8 = exact_index(docs, "int8", docs)
    assert int8.code_size == 64
    assert 0.8 <= recall_at_k(search(int8, queries), exact) < 1.0 + 1e-9
    with pytest.raises(ValueError, match="precision"):
        exact_index(docs, "fp16", docs)


def test_exact_speed_rows_sizes_and_speedups():
    corpus = random_unit(4000, 128, seed=3)
    rows = exact_speed(corpus, [128, 32], n_queries=8, repeats=1)
    assert [(r["dim"], r["precision"], r["path"]) for r in rows] == [
        (dim, precision, path) for dim in (128, 32)
        for precision, path in [("float32", "default"), ("float32", "BLAS"), ("int8", "default"),
                                ("binary", "default")]]
    assert [r["bytes_per_vector"] for r in rows] == [512, 512, 128, 16, 128, 128, 32, 4]
    assert all(r["index_bytes"] == 4000 * r["bytes_per_vector"] for r in rows)
    assert all(r["speedup"] == 1.0 and r["ideal_speedup"] == 1.0 for r in rows[:4])
    for row in rows[4:6]:
        assert row["ideal_speedup"] == 4.0 and row["target_met"] == (row["speedup"] >= 3.2)
    assert rows[6]["target_met"] is None


def test_hnsw_recall_and_memory():
    corpus = random_unit(3000, 64, seed=4)
    rows = hnsw_table(corpus, [64, 16], n_docs=2000, n_queries=16, repeats=1)
    assert [(r["dim"], r["docs"]) for r in rows] == [(64, 2000), (16, 2000)]
    assert all(r["recall@10"] >= 0.9 and r["recall@1"] >= 0.9 and r["build_s"] > 0 for r in rows)
    index = faiss.IndexHNSWFlat(16, 32, faiss.METRIC_INNER_PRODUCT)
    index.add(unit_prefix(corpus, 16, 2000))
    assert hnsw_memory_bytes(index) == rows[1]["memory_bytes"]
    assert hnsw_memory_bytes(index) == pytest.approx(len(faiss.serialize_index(index)), rel=0.01)


def test_report_tables():
    section = faiss_report(random_unit(2000, 64, seed=5), [64, 16], n_queries=8, repeats=1, hnsw_docs=1000,
                           threads=1)
    assert section["threads"] == 1 and section["docs"] == 2000 and section["hnsw"]["rows"][0]["docs"] == 1000
    text = "\n".join(format_faiss(section))
    assert "IndexHNSWFlat" in text and "first 1,000 synthetic vectors" in text
    assert text.count("met |") == 4   # a float32 verdict per dim and path
