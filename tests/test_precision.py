"""The precision x dimension grid on a small real SciFact slice (MiniLM, 60 test queries, 773 documents): the
streamed quantize -> search -> rescore equals a whole-matrix numpy reference built on Sentence-Transformers'
``quantize_embeddings``, quantized and rescored scores order as they should, the bytes per vector, and the
readers of a grid (Pareto front, best cell per byte budget, the bytes plot) on hand-made cells."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sentence_transformers.util.quantization import quantize_embeddings

from smec_hf.core.retrieval import ndcg_at_10, ndcg_by_dim, per_query_ndcg
from smec_hf.evaluation.precision import (Cell, best_per_budget, budget_markdown, cells, grid_report, index_bytes,
                                          pareto_front, precision_grid, search_variants, total_bytes)

DIMS = [384, 64]
CHUNK = 97          # many chunks, the last one short: exercises the streamed merge


def truncate(vectors: np.ndarray, dim: int) -> np.ndarray:
    return np.asarray(vectors, dtype=np.float32)[:, :dim]


def ranked(scores: np.ndarray, k: int) -> np.ndarray:
    """The top-``k`` columns per row by score, ties to the lower column (numpy, whole matrix)."""
    columns = np.broadcast_to(np.arange(scores.shape[1]), scores.shape)
    return np.lexsort((columns, -scores), axis=1)[:, :k]


def reference(corpus: np.ndarray, queries: np.ndarray, r: int) -> dict[str, np.ndarray]:
    """Naive full-matrix reference of every variant on unit vectors, int8 calibrated on the whole corpus."""
    codes = quantize_embeddings(corpus, "int8", calibration_embeddings=corpus)
    q_codes = quantize_embeddings(queries, "int8", calibration_embeddings=corpus)
    low, high = corpus.min(axis=0), corpus.max(axis=0)
    decoded = (codes.astype(np.float64) + 128) * ((high - low) / 255) + low
    bits, q_bits = np.unpackbits(quantize_embeddings(corpus, "ubinary"), axis=1), \
        np.unpackbits(quantize_embeddings(queries, "ubinary"), axis=1)
    hamming = (q_bits[:, None, :] != bits[None, :, :]).sum(axis=2)
    out = {"float32": ranked(queries.astype(np.float64) @ corpus.T.astype(np.float64), 10)}
    for name, first_stage in (("int8", q_codes.astype(np.int64) @ codes.astype(np.int64).T), ("binary", -hamming)):
        candidates = ranked(first_stage, r)
        out[name] = candidates[:, :10]
        rescored = np.einsum("ij,ikj->ik", queries, decoded[candidates])
        out[f"{name}_rescored"] = np.take_along_axis(candidates, ranked(rescored, 10), axis=1)
    return out


def unit(x: np.ndarray) -> np.ndarray:
    return F.normalize(torch.from_numpy(np.array(x, dtype=np.float32)), dim=-1).numpy()


@pytest.fixture(scope="module")
def test_queries(scifact_small, scifact_small_cache):
    index = scifact_small_cache.query_index()
    ids = [q for q in scifact_small.qrels["test"] if q in index]
    return ids, np.asarray(scifact_small_cache.queries[[index[q] for q in ids]], dtype=np.float32)


@pytest.fixture(scope="module")
def grid(scifact_small, scifact_small_cache):
    return precision_grid(truncate, scifact_small_cache, scifact_small.qrels["test"], DIMS, chunk_size=CHUNK)


@pytest.mark.parametrize("dim", DIMS)
def test_streamed_search_equals_the_full_matrix_reference(dim, scifact_small_cache, test_queries):
    ids, queries = test_queries
    corpus = np.asarray(scifact_small_cache.corpus)
    ours = search_variants(truncate, scifact_small_cache.corpus, queries, dim, rescore_multiplier=4, chunk_size=CHUNK)
    expected = reference(unit(corpus[:, :dim]), unit(queries[:, :dim]), r=40)
    assert set(ours) == set(expected) == {"float32", "int8", "int8_rescored", "binary", "binary_rescored"}
    for name in expected:
        assert ours[name].shape == (len(ids), 10)
        np.testing.assert_array_equal(ours[name], expected[name], err_msg=name)


def test_exact_beyond_1024_dims():
    """Wide int8 codes overflow float32's exact integers, so the first stage switches to float64: still exact."""
    rng = np.random.default_rng(0)
    corpus, queries = rng.standard_normal((300, 1536), dtype=np.float32), rng.standard_normal((7, 1536), np.float32)
    ours = search_variants(truncate, corpus, queries, 1536, rescore_multiplier=2, chunk_size=64)
    expected = reference(unit(corpus), unit(queries), r=20)
    for name in expected:
        np.testing.assert_array_equal(ours[name], expected[name], err_msg=name)


@pytest.mark.parametrize("dim", [12, 40])
def test_faiss_first_stages_equal_brute_force_with_many_ties(dim):
    """Few bits make Hamming distances tie by the hundred at the r-th place: FAISS's popcount search per block,
    merged across uneven blocks, must still keep exactly the brute force's lower rows (12 bits: padding too)."""
    rng = np.random.default_rng(dim)
    corpus, queries = rng.standard_normal((1000, dim), dtype=np.float32), rng.standard_normal((9, dim), np.float32)
    ours = search_variants(truncate, corpus, queries, dim, rescore_multiplier=4, chunk_size=123)
    expected = reference(unit(corpus), unit(queries), r=40)
    for name in expected:
        np.testing.assert_array_equal(ours[name], expected[name], err_msg=name)


def test_grid_scores_are_pytrec_eval_of_the_reference(grid, scifact_small, scifact_small_cache, test_queries):
    ids, queries = test_queries
    qrels = {q: scifact_small.qrels["test"][q] for q in ids}
    corpus = np.asarray(scifact_small_cache.corpus)
    expected = reference(unit(corpus[:, :64]), unit(queries[:, :64]), r=40)
    for name, rows in expected.items():
        run = {q: {scifact_small_cache.corpus_ids[j]: 10.0 - rank for rank, j in enumerate(row)}
               for q, row in zip(ids, rows.tolist())}
        scores = per_query_ndcg(run, qrels)
        assert set(grid.per_query[name][64]) == set(scores)
        assert all(abs(grid.per_query[name][64][q] - scores[q]) <= 1e-6 for q in scores), name
        key = "ndcg@10_rescored" if name.endswith("_rescored") else "ndcg@10"
        assert grid.cells[name.split("_")[0]]["64"][key] == pytest.approx(ndcg_at_10(run, qrels), abs=1e-6)


def test_float32_cell_is_the_plain_cosine_score(grid, scifact_small, scifact_small_cache):
    plain = ndcg_by_dim(truncate, scifact_small_cache, scifact_small.qrels["test"], DIMS)
    for dim in DIMS:
        assert grid.cells["float32"][str(dim)]["ndcg@10"] == pytest.approx(plain[dim], abs=1e-9)


def test_quantization_costs_and_rescoring_recovers(grid):
    """Measured here: binary 64-d 0.52 plain, 0.63 rescored, float32 0.68; int8 within 0.02 of float32."""
    for dim in map(str, DIMS):
        full = grid.cells["float32"][dim]["ndcg@10"]
        int8, binary = grid.cells["int8"][dim], grid.cells["binary"][dim]
        assert full - 0.04 <= int8["ndcg@10"] <= full + 0.01, (dim, int8, full)
        assert binary["ndcg@10"] <= full + 0.005, (dim, binary, full)
        assert int8["ndcg@10_rescored"] >= int8["ndcg@10"] - 1e-9
        assert binary["ndcg@10_rescored"] >= binary["ndcg@10"] + 0.02, (dim, binary)
        assert abs(int8["ndcg@10_rescored"] - full) <= 0.02
    assert grid.cells["binary"]["64"]["ndcg@10"] <= grid.cells["float32"]["64"]["ndcg@10"] - 0.08


def test_rescoring_everything_makes_binary_and_int8_agree(scifact_small, scifact_small_cache):
    """With r >= the corpus, both rescore every document with the same int8 store: the first stage no longer
    matters, so the rescored scores must be identical query by query."""
    wide = precision_grid(truncate, scifact_small_cache, scifact_small.qrels["test"], [64], rescore_multiplier=100,
                          chunk_size=CHUNK)
    assert wide.per_query["binary_rescored"][64] == wide.per_query["int8_rescored"][64]
    assert wide.rescore_multiplier == 100


def test_bytes_per_vector(grid):
    assert [index_bytes(p, 384) for p in ("float32", "int8", "binary")] == [1536, 384, 48]
    assert index_bytes("binary", 100) == 13 and total_bytes("binary", 100, rescored=True) == 113
    assert total_bytes("int8", 64, rescored=True) == 64 and total_bytes("binary", 64, rescored=False) == 8
    found = {p: {d: (e["index_bytes"], e["total_bytes"]) for d, e in by_dim.items()}
             for p, by_dim in grid.cells.items()}
    assert found == {"float32": {"384": (1536, 1536), "64": (256, 256)}, "int8": {"384": (384, 384), "64": (64, 64)},
                     "binary": {"384": (48, 432), "64": (8, 72)}}
    assert "ndcg@10_rescored" not in grid.cells["float32"]["64"]
    with pytest.raises(ValueError, match="precision must be one of"):
        index_bytes("int4", 64)


def test_bad_arguments_raise(scifact_small, scifact_small_cache):
    with pytest.raises(ValueError, match="rescore_multiplier"):
        precision_grid(truncate, scifact_small_cache, scifact_small.qrels["test"], [64], rescore_multiplier=0)
    with pytest.raises(ValueError, match="none of the evaluation queries"):
        precision_grid(truncate, scifact_small_cache, {"nope": {"d": 1}}, [64])


def test_per_query_ndcg_mean_is_ndcg_at_10():
    qrels = {"a": {"d1": 1}, "b": {"d2": 2, "d3": 1}, "c": {"d4": 1}, "empty": {}}
    run = {"a": {"d1": 2.0, "d9": 1.0}, "b": {"d9": 2.0, "d3": 1.0}}
    scores = per_query_ndcg(run, qrels)
    assert set(scores) == {"a", "b", "c"} and scores["a"] == 1.0 and scores["c"] == 0.0 and 0 < scores["b"] < 1
    assert ndcg_at_10(run, qrels) == float(np.mean(list(scores.values())))


def hand_cell(method, precision, dim, rescored, ndcg) -> Cell:
    return Cell(method, precision, dim, rescored, ndcg, index_bytes(precision, dim),
                total_bytes(precision, dim, rescored))


HAND = [hand_cell("smec", "float32", 64, False, 0.70), hand_cell("smec", "int8", 64, False, 0.69),
        hand_cell("smec", "binary", 256, False, 0.60), hand_cell("smec", "binary", 256, True, 0.72),
        hand_cell("pca", "float32", 32, False, 0.50), hand_cell("pca", "int8", 32, False, 0.49),
        hand_cell("pca", "binary", 64, True, 0.45), hand_cell("pca", "int8", 128, True, 0.71)]


def test_pareto_front_keeps_only_non_dominated_cells():
    front = pareto_front(HAND)
    assert [(c.method, c.precision, c.dim, c.rescored) for c in front] == [
        ("pca", "binary", 64, True), ("smec", "binary", 256, True)]     # 8 bytes 0.45, 32 bytes 0.72 beats all
    for cell in front:
        assert not any(o.index_bytes <= cell.index_bytes and o.ndcg >= cell.ndcg and
                       (o.index_bytes, o.ndcg) != (cell.index_bytes, cell.ndcg) for o in HAND)
    by_total = pareto_front(HAND, "total_bytes")
    assert [c.total_bytes for c in by_total] == [32, 64, 128, 288] and by_total[-1].ndcg == 0.72
    with pytest.raises(ValueError, match="bytes_key"):
        pareto_front(HAND, "bytes")


def test_best_per_budget_table():
    rows = best_per_budget(HAND, budgets=(4, 8, 32, 128, 256), bytes_key="total_bytes")
    picked = [(b, None if c is None else (c.method, c.precision, c.dim, c.rescored)) for b, c in rows]
    assert picked == [(4, None), (8, None), (32, ("smec", "binary", 256, False)), (128, ("pca", "int8", 128, True)),
                      (256, ("pca", "int8", 128, True))]
    assert [c.dim for _, c in best_per_budget(HAND, budgets=(32,))] == [256]
    markdown = budget_markdown(rows, "total_bytes")
    assert "| 4 | (nothing fits) |" in markdown and "| 128 | pca | int8 | 128 | int8 | 0.7100 | 128 | 128 |" in markdown


def test_grid_report_round_trips_through_cells(grid):
    section = grid_report({"truncation": grid})["precision_grid"]
    assert section["rescore_multiplier"] == 4 and section["top_k"] == 10
    found = cells(section)
    assert len(found) == len(DIMS) * 5
    binary = next(c for c in found if (c.precision, c.dim, c.rescored) == ("binary", 64, True))
    assert (binary.index_bytes, binary.total_bytes) == (8, 72)
    assert binary.ndcg == grid.cells["binary"]["64"]["ndcg@10_rescored"]


def test_bytes_plot_writes_a_png(grid, tmp_path):
    pytest.importorskip("matplotlib")
    from smec_hf.evaluation.bytes_plot import plot_bytes

    section = grid_report({"truncation": grid})["precision_grid"]
    path = plot_bytes(section, tmp_path / "plots" / "ndcg_vs_bytes.png", title="SciFact slice")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
    assert [p.name for p in path.parent.iterdir()] == ["ndcg_vs_bytes.png"]     # no temporary file left
