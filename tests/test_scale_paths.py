"""The paths that keep training's cost proportional to the data: FAISS IVF mining above a corpus size, mining once
per cache (shared by methods and processes), held-out scoring on fixed candidate sets, a chunked PCA."""
from __future__ import annotations

import numpy as np
import torch

from smec_hf.core import search
from smec_hf.core.pca import fit_pca
from smec_hf.core.search import CandidateSet, frozen_top_k
from smec_hf.data import EmbeddingCache
from smec_hf.data import mining
from smec_hf.data.examples import TrainingExamples
from smec_hf.engine.held_out import held_out_ndcg_per_query


def _clustered(n_docs: int = 4000, dim: int = 32, n_queries: int = 300, seed: int = 0):
    """Documents around 40 centres; each query a noisy copy of one document, its positive."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((40, dim)) * 3
    docs = (centres[rng.integers(0, 40, n_docs)] + rng.standard_normal((n_docs, dim))).astype(np.float32)
    positives = rng.choice(n_docs, n_queries, replace=False)
    queries = (docs[positives] + 0.5 * rng.standard_normal((n_queries, dim))).astype(np.float32)
    qrels = {f"q{i}": {f"d{p}": 1} for i, p in enumerate(positives)}
    return docs, queries, qrels


def _cache(tmp_path, docs, queries) -> EmbeddingCache:
    cache = EmbeddingCache.from_vectors([f"d{i}" for i in range(len(docs))], docs,
                                        [f"q{i}" for i in range(len(queries))], queries, meta={"key": "clustered"})
    return EmbeddingCache.load(cache.save(tmp_path / "cache"))


def test_ivf_mining_finds_most_of_the_exact_neighbours():
    docs, queries, _ = _clustered()
    exact = frozen_top_k(queries, docs, 50, exact_max_docs=len(docs))
    approximate = frozen_top_k(queries, docs, 50, exact_max_docs=0)
    assert approximate.shape == exact.shape == (len(queries), 50)
    recall = np.mean([len(set(a) & set(e)) / 50 for a, e in zip(approximate, exact)])
    assert 0.8 < recall < 1.0        # approximate, yet the near neighbourhood hard negatives are drawn from


def test_mining_runs_once_per_cache_and_is_memory_mapped(tmp_path, monkeypatch):
    docs, queries, qrels = _clustered()
    cache = _cache(tmp_path, docs, queries)
    calls = []
    real = mining.frozen_top_k
    monkeypatch.setattr(mining, "frozen_top_k", lambda *a, **k: calls.append(1) or real(*a, **k))
    first = TrainingExamples.build(cache, qrels, 0.1, 0, 20)
    again = TrainingExamples.build(EmbeddingCache.load(tmp_path / "cache"), qrels, 0.1, 0, 20)   # another method
    assert len(calls) == 1
    assert isinstance(again.fit.frozen_top, np.ndarray)
    assert torch.equal(first.fit.negative_pool, again.fit.negative_pool)
    assert len(list((tmp_path / "cache" / mining.MINED_DIR).glob("*.npy"))) == 1


def test_candidate_set_pairs_every_probe_with_its_rows_once():
    candidates = CandidateSet.build(np.array([[5, 3, -1], [3, 9, 2]]), [[5, 7], []])
    assert candidates.rows.tolist() == [2, 3, 5, 7, 9]
    pairs = sorted(zip(candidates.pair_probe.tolist(), candidates.rows[candidates.pair_slot].tolist()))
    assert pairs == [(0, 3), (0, 5), (0, 7), (1, 2), (1, 3), (1, 9)]
    assert np.all(np.diff(candidates.pair_slot) >= 0)


def test_candidate_scoring_equals_the_full_scan_where_the_top_ten_are_candidates():
    docs, queries, qrels = _clustered()
    cache = EmbeddingCache.from_vectors([f"d{i}" for i in range(len(docs))], docs,
                                        [f"q{i}" for i in range(len(queries))], queries)
    examples = TrainingExamples.build(cache, qrels, 0.3, 0, 20)
    rotation = torch.linalg.qr(torch.randn(32, 32, generator=torch.Generator().manual_seed(0)))[0]
    encode = lambda x: x @ rotation.T        # noqa: E731  (a rotation keeps every cosine: same top ten)
    full = held_out_ndcg_per_query(examples, encode, [32])
    examples.exact_max_docs = 0              # as above the exact size, on the same (exact) mined rows
    assert not examples.scans_corpus
    on_candidates = held_out_ndcg_per_query(examples, encode, [32, 8], chunk_size=500)
    np.testing.assert_allclose(on_candidates[32], full[32], atol=1e-6)
    assert on_candidates[8].shape == full[32].shape


def test_candidate_sets_hold_every_judged_document():
    docs, queries, qrels = _clustered()
    cache = EmbeddingCache.from_vectors([f"d{i}" for i in range(len(docs))], docs,
                                        [f"q{i}" for i in range(len(queries))], queries)
    examples = TrainingExamples.build(cache, qrels, 0.3, 0, 20, exact_max_docs=0)
    candidates = examples.held_out_candidates
    index = cache.doc_index()
    for i, q in enumerate(examples.held.query_ids):
        mine = set(candidates.rows[candidates.pair_slot[candidates.pair_probe == i]].tolist())
        assert {index[d] for d in qrels[q]} <= mine
        assert len(mine) <= 101


def test_chunked_pca_equals_one_pass():
    x = np.random.default_rng(0).standard_normal((3000, 16)).astype(np.float32) * np.arange(1, 17, dtype=np.float32)
    one, chunked = fit_pca(x), fit_pca(x, chunk_rows=256)
    np.testing.assert_allclose(chunked.components, one.components, atol=1e-5)
    np.testing.assert_allclose(chunked.mean, one.mean, atol=1e-6)


def test_exact_search_chunks_its_queries(monkeypatch):
    docs, queries, _ = _clustered(n_queries=300)
    whole = frozen_top_k(queries, docs, 10, len(docs))
    monkeypatch.setattr(search, "QUERY_CHUNK", 64)
    np.testing.assert_array_equal(frozen_top_k(queries, docs, 10, len(docs)), whole)


def test_a_large_pass_spans_several_epochs_each_a_piece_of_one_permutation():
    from smec_hf.baselines.adaptors import ranking_batches
    from smec_hf.core.config import FitConfig
    from smec_hf.data.examples import epoch_pieces

    assert epoch_pieces(900, 8192) == epoch_pieces(900, 0) == 1 and epoch_pieces(1000, 300) == 4
    docs, queries, qrels = _clustered()
    cache = EmbeddingCache.from_vectors([f"d{i}" for i in range(len(docs))], docs,
                                        [f"q{i}" for i in range(len(queries))], queries)
    examples = TrainingExamples.build(cache, qrels, 0.1, 0, 20)
    n_pairs = len(examples.fit.pairs)
    seen = [torch.cat([b.queries for b in examples.epoch_batches(
        16, 2, torch.Generator().manual_seed(3), torch.Generator().manual_seed(4), piece=(i, 3))]) for i in range(3)]
    assert sum(len(s) for s in seen) == n_pairs          # the three epochs are one pass
    whole = torch.cat([b.queries for b in examples.epoch_batches(16, 2, torch.Generator().manual_seed(3),
                                                                 torch.Generator().manual_seed(4))])
    torch.testing.assert_close(torch.cat(seen), whole)
    # the baselines' epochs: pieces of one pass per sweep, then a new permutation
    steps = ranking_batches(examples, FitConfig(epoch_pairs=100, batch_size=16))
    generator = torch.Generator().manual_seed(0)
    pieces = epoch_pieces(n_pairs, 100)
    sweeps = [torch.cat([torch.cat([b.queries for b in steps(generator)]) for _ in range(pieces)]) for _ in range(2)]
    assert all(len(s) == n_pairs for s in sweeps)
    assert not torch.equal(sweeps[0], sweeps[1])
    rows = lambda x: sorted(map(tuple, x.tolist()))     # noqa: E731
    assert rows(sweeps[0]) == rows(sweeps[1])            # every pair once per sweep


def test_frozen_stages_run_as_one_folded_map_until_their_weights_change():
    from smec_hf.smec.chain import SMECChain

    torch.manual_seed(0)
    chain = SMECChain([32, 16, 8, 4], "orthogonal", True)
    with torch.no_grad():
        for p in chain.parameters():
            p.add_(0.1 * torch.randn_like(p))
    for s in range(len(chain.stages)):
        chain.freeze_stage(s)
    x = torch.randn(50, 32)
    for n in (0, 1, 2, 3):
        torch.testing.assert_close(chain.frozen_output(x, n), chain(x, n), atol=1e-5, rtol=1e-5)
        lead = chain.dims[n]                          # a stage reads only its leading block
        torch.testing.assert_close(chain.frozen_output(x, n, lead), chain(x, n)[:, :lead], atol=1e-5, rtol=1e-5)
    cached = chain.__dict__["_folded"][1]
    chain.frozen_output(x, 3)
    assert chain.__dict__["_folded"][1] is cached                   # reused while nothing changed
    with torch.no_grad():
        chain.stages[0].fc.weight.mul_(1.5)           # stage 1 is a general map: its weight is a plain parameter
    torch.testing.assert_close(chain.frozen_output(x, 3), chain(x, 3), atol=1e-5, rtol=1e-5)


def test_do_no_harm_can_search_the_whole_corpus_at_any_size():
    """``full_scan=True`` (what do no harm passes) searches every document even above the exact size, streaming
    the corpus once for all sizes: the same scores as the small-corpus path."""
    docs, queries, qrels = _clustered()
    cache = EmbeddingCache.from_vectors([f"d{i}" for i in range(len(docs))], docs,
                                        [f"q{i}" for i in range(len(queries))], queries)
    examples = TrainingExamples.build(cache, qrels, 0.3, 0, 20)
    head = torch.randn(32, 32, generator=torch.Generator().manual_seed(1))
    encode = lambda x: x @ head.T          # noqa: E731
    exact = held_out_ndcg_per_query(examples, encode, [32, 8])
    examples.exact_max_docs = 0
    forced = held_out_ndcg_per_query(examples, encode, [32, 8], chunk_size=700, full_scan=True)
    for k in (32, 8):
        np.testing.assert_allclose(forced[k], exact[k], atol=1e-6)
