"""MTEB evaluation: the local task against hand-computed nDCG@10, the results folder, the cache trap, and the
exported model scored through ``SentenceTransformer`` equal to what ``encode(truncate_dim=k)`` scores."""
from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from sentence_transformers import SentenceTransformer

from smec_hf.baselines.frozen import TruncationCompressor
from smec_hf.data.beir import RetrievalData
from smec_hf.data.cache import EmbeddingCache
from smec_hf.evaluation.mteb_eval import (FullSizeEncodings, check_export, compressor_meta, evaluate_meta,
                                         evaluate_methods, exported_model_meta, model_revision)
from smec_hf.evaluation.mteb_task import LocalRetrievalTask, retrieval_tasks
from smec_hf.core.retrieval import ndcg_at_10
from smec_hf.hf.export import export_model
from smec_hf.smec.chain import SMECChain
from smec_hf.smec.compressor import SMECCompressor

# Four documents, two test queries. q1 ranks d1 > d3 > d4 > d2 at 3 dims and d1 > d2 > d3 > d4 at 2 dims;
# q2 ranks its one relevant document, d4, first at both.
TOY = RetrievalData(
    name="toy", corpus_ids=["d1", "d2", "d3", "d4"], corpus_texts=["one", "two", "three", "four"],
    query_ids=["q1", "q2", "q3"], query_texts=["first", "second", "third"],
    qrels={"train": {"q3": {"d1": 1}}, "test": {"q1": {"d1": 1, "d3": 2}, "q2": {"d4": 1}}},
)
CORPUS = np.array([[0.2, 1.0, 0.0], [0.9, 0.1, 0.0], [0.5, 0.0, 1.0], [-1.0, 0.0, 1.0]], dtype=np.float32)
QUERIES = np.array([[0.1, 1.0, 0.5], [-1.0, 0.1, 0.9], [1.0, 0.0, 0.0]], dtype=np.float32)


def dcg(gains: list[int]) -> float:
    return sum(g / math.log2(rank + 2) for rank, g in enumerate(gains))


def hand_ndcg(ranking: list[str], judged: dict[str, int]) -> float:
    ideal = dcg(sorted(judged.values(), reverse=True))
    return dcg([judged.get(d, 0) for d in ranking[:10]]) / ideal


@pytest.fixture()
def toy_cache() -> EmbeddingCache:
    return EmbeddingCache.from_vectors(TOY.corpus_ids, CORPUS, TOY.query_ids, QUERIES)


def test_local_task_matches_hand_computed_ndcg(toy_cache, tmp_path):
    scores = evaluate_methods([TruncationCompressor([3, 2])], toy_cache, [LocalRetrievalTask.from_data(TOY)],
                              tmp_path, show_progress_bar=False)["truncation"]["LocalRetrieval-toy"]
    q1 = TOY.qrels["test"]["q1"]                       # {d1: 1, d3: 2}; q2's nDCG is 1 at both sizes
    assert hand_ndcg(["d1", "d3", "d4", "d2"], q1) == pytest.approx(0.8597, abs=1e-4)
    assert scores[3] == pytest.approx((hand_ndcg(["d1", "d3", "d4", "d2"], q1) + 1.0) / 2, abs=1e-5)
    assert scores[2] == pytest.approx((hand_ndcg(["d1", "d2", "d3", "d4"], q1) + 1.0) / 2, abs=1e-5)


def test_results_folder_is_standard_mteb(toy_cache, tmp_path):
    evaluate_methods([TruncationCompressor([3, 2])], toy_cache, [LocalRetrievalTask.from_data(TOY)], tmp_path,
                     show_progress_bar=False)
    model_dir = tmp_path / "results" / "smec-hf__truncation"
    (revision,) = [p.name for p in model_dir.iterdir()]
    for dim in (3, 2):
        experiment = model_dir / revision / "experiments" / f"embed_dim_{dim}"
        result = json.loads((experiment / "LocalRetrieval-toy.json").read_text())
        meta = json.loads((experiment / "model_meta.json").read_text())
        assert result["task_name"] == "LocalRetrieval-toy" and "ndcg_at_10" in result["scores"]["test"][0]
        assert meta["experiment_kwargs"] == {"embed_dim": dim} and meta["name"] == "smec-hf/truncation"


class Switchable(TruncationCompressor):
    """A compressor whose output can change under the same name: the silent-cache-reuse trap."""

    flipped = False

    def transform(self, vectors, dim):
        out = super().transform(vectors, dim).copy()
        if self.flipped:
            out[:, 1] = 0.0          # q1 then ranks d3 (grade 2) first
        return out


def test_changed_model_is_rescored_not_read_from_cache(toy_cache, tmp_path):
    task = [LocalRetrievalTask.from_data(TOY)]
    method = Switchable([3])
    first = evaluate_methods([method], toy_cache, task, tmp_path, show_progress_bar=False)
    method.flipped = True
    second = evaluate_methods([method], toy_cache, task, tmp_path, show_progress_bar=False)
    assert second["truncation"]["LocalRetrieval-toy"][3] > first["truncation"]["LocalRetrieval-toy"][3] + 0.02
    assert len(list((tmp_path / "results" / "smec-hf__truncation").iterdir())) == 2   # two revisions


def test_ids_missing_from_the_cache_are_an_error(tmp_path):
    cache = EmbeddingCache.from_vectors(TOY.corpus_ids[:3], CORPUS[:3], TOY.query_ids, QUERIES)
    with pytest.raises(KeyError, match="not in the embedding cache"):
        evaluate_methods([TruncationCompressor([3])], cache, [LocalRetrievalTask.from_data(TOY)], tmp_path,
                         show_progress_bar=False)


def test_local_task_from_beir_folder_and_bad_split(tmp_path):
    folder = tmp_path / "beir"
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text("".join(
        json.dumps({"_id": d, "title": "", "text": t}) + "\n" for d, t in zip(TOY.corpus_ids, TOY.corpus_texts)))
    (folder / "queries.jsonl").write_text("".join(
        json.dumps({"_id": q, "text": t}) + "\n" for q, t in zip(TOY.query_ids, TOY.query_texts)))
    for split, qrels in TOY.qrels.items():
        rows = [f"{q}\t{d}\t{s}" for q, docs in qrels.items() for d, s in docs.items()]
        (folder / "qrels" / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\n" + "\n".join(rows) + "\n")
    task = LocalRetrievalTask.from_beir(folder)
    task.load_data()
    split = task.dataset["default"]["test"]
    assert sorted(split["queries"]["id"]) == ["q1", "q2"] and len(split["corpus"]) == 4
    assert split["relevant_docs"] == TOY.qrels["test"]
    assert task.metadata.name == "LocalRetrieval-beir" and task.metadata.main_score == "ndcg_at_10"
    with pytest.raises(ValueError, match="split='dev'"):
        retrieval_tasks(TOY, split="dev")


def test_standard_tasks_by_name():
    """Resolving names needs no network (only running them does)."""
    (task,) = retrieval_tasks(task_names=["SciFact"])
    assert task.metadata.name == "SciFact" and task.metadata.main_score == "ndcg_at_10"
    with pytest.raises(ValueError, match="STS12"):
        retrieval_tasks(task_names=["STS12"])


# ------------------------------------------------------------------ the exported model, through SentenceTransformer

DIMS = [384, 128, 32]


@pytest.fixture(scope="module")
def small_task_data(scifact_small: RetrievalData) -> RetrievalData:
    """8 test queries, their documents and 20 others: enough to rank, cheap to encode at 256 tokens."""
    return scifact_small.subset({"test": 8}, n_extra_docs=20, seed=1)


@pytest.fixture(scope="module")
def exported_chain() -> SMECChain:
    """A fixed, non-trivial (random) chain: the scoring path is what is tested, not training."""
    chain = SMECChain(DIMS)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in chain.parameters():
            parameter.add_(0.2 * torch.randn(parameter.shape, generator=generator))
    return chain


@pytest.fixture(scope="module")
def exported_model(tmp_path_factory: pytest.TempPathFactory, minilm_path: str, exported_chain: SMECChain) -> Path:
    """An export of :func:`exported_chain`."""
    run_dir = tmp_path_factory.mktemp("run")
    exported_chain.save(run_dir / "head")
    run = {"base_model": minilm_path, "dims": DIMS, "dataset": "scifact", "config": {"dims": DIMS},
           "results": {"ndcg@10": {"smec": {str(d): 0.5 for d in DIMS}}}}
    (run_dir / "smec_run.json").write_text(json.dumps(run))
    return export_model(run_dir, tmp_path_factory.mktemp("export") / "model")


def test_exported_model_scores_equal_encode_with_truncate_dim(exported_model, small_task_data, tmp_path,
                                                              monkeypatch):
    encoded = []
    original = SentenceTransformer.encode_document

    def counting(self, texts, *args, **kwargs):
        encoded.extend(texts)
        return original(self, texts, *args, **kwargs)

    monkeypatch.setattr(SentenceTransformer, "encode_document", counting)
    meta = exported_model_meta(exported_model, DIMS, name="smec")
    scores = evaluate_meta(meta, [LocalRetrievalTask.from_data(small_task_data)], tmp_path,
                           show_progress_bar=False)["LocalRetrieval-scifact-subset-subset"]
    assert sorted(encoded) == sorted(small_task_data.corpus_texts)      # one full-size pass for all dims
    monkeypatch.undo()

    model = SentenceTransformer(str(exported_model), device="cpu")
    data, qrels = small_task_data, small_task_data.qrels["test"]
    query_ids = [q for q in data.query_ids if q in qrels]
    query_texts = [t for q, t in zip(data.query_ids, data.query_texts) if q in qrels]
    for dim in DIMS:
        queries = model.encode_query(query_texts, truncate_dim=dim, convert_to_tensor=True)
        docs = model.encode_document(data.corpus_texts, truncate_dim=dim, convert_to_tensor=True)
        assert docs.shape == (len(data.corpus_ids), dim)
        sims = torch.nn.functional.normalize(queries, dim=-1) @ torch.nn.functional.normalize(docs, dim=-1).T
        run = {q: {data.corpus_ids[j]: float(sims[i, j]) for j in range(len(data.corpus_ids))}
               for i, q in enumerate(query_ids)}
        assert scores[dim] == pytest.approx(ndcg_at_10(run, qrels), abs=1e-4), dim
    assert len(set(round(s, 4) for s in scores.values())) == len(DIMS)       # the dims really differ


def test_truncate_dim_is_a_prefix_of_the_full_encoding(exported_model):
    model = SentenceTransformer(str(exported_model), device="cpu")
    texts = ["SMEC compresses embeddings.", "A second, longer sentence about nested prefixes of vectors."]
    full = model.encode(texts, convert_to_numpy=True)
    for dim in DIMS:
        np.testing.assert_allclose(model.encode(texts, truncate_dim=dim, convert_to_numpy=True), full[:, :dim],
                                   atol=1e-6)


# ------------------------------------------------------------------ MTEB's FAISS search; the exported model checked


def test_faiss_search_scores_equal_mteb_default_search(scifact_small, scifact_small_cache, tmp_path):
    """MTEB's FAISS backend (one exact IndexFlatIP search) gives the default heap merge's scores, every metric."""
    task = [LocalRetrievalTask.from_data(scifact_small)]
    meta = compressor_meta(TruncationCompressor([384, 64]), scifact_small_cache)
    faiss_scores = evaluate_meta(meta, task, tmp_path / "faiss", show_progress_bar=False)
    heap_scores = evaluate_meta(meta, task, tmp_path / "heap", show_progress_bar=False, faiss_search=False)
    assert faiss_scores.keys() == heap_scores.keys()
    for name, by_dim in heap_scores.items():
        assert by_dim == pytest.approx(faiss_scores[name], abs=1e-6)
    for dim in (384, 64):
        found = [json.loads(next((root / "results").rglob(f"embed_dim_{dim}/LocalRetrieval-*.json")).read_text())
                 ["scores"]["test"][0] for root in (tmp_path / "faiss", tmp_path / "heap")]
        metrics = [k for k in found[1] if k.split("_at_")[0] in ("ndcg", "map", "recall", "precision", "mrr")]
        assert len(metrics) > 20
        assert {k: found[0][k] for k in metrics} == pytest.approx({k: found[1][k] for k in metrics}, abs=1e-6)


@pytest.fixture(scope="module")
def base_cache(small_task_data, minilm_path) -> EmbeddingCache:
    """The base encoder's vectors of the small task as the exported model's encoder makes them (256 tokens)."""
    base = SentenceTransformer(minilm_path, device="cpu")
    return EmbeddingCache.from_vectors(small_task_data.corpus_ids, base.encode_document(small_task_data.corpus_texts),
                                       small_task_data.query_ids, base.encode_query(small_task_data.query_texts))


def test_checked_export_is_scored_on_cached_vectors_like_the_re_encode(exported_model, exported_chain, base_cache,
                                                                         small_task_data, tmp_path):
    method = SMECCompressor.from_chain(exported_chain, name="smec")
    task = [LocalRetrievalTask.from_data(small_task_data)]
    checks: dict = {}
    checked = evaluate_methods([method], base_cache, task, tmp_path / "checked", model_dirs={"smec": exported_model},
                               show_progress_bar=False, checks=checks)["smec"]
    full = evaluate_methods([method], base_cache, task, tmp_path / "full", model_dirs={"smec": exported_model},
                            show_progress_bar=False, reencode_exported=True)["smec"]
    check = checks["smec"]
    assert check.passed and check.texts == len(small_task_data.corpus_ids) + 8 and check.max_abs_diff < 1e-5
    assert "scored on the cached vectors" in check.describe("smec") and f"{check.texts} sampled" in check.describe("smec")
    for name, by_dim in full.items():
        assert checked[name] == pytest.approx(by_dim, abs=1e-6)
    revisions = [[p.name for p in (root / "results" / "smec-hf__smec").iterdir()]
                 for root in (tmp_path / "checked", tmp_path / "full")]
    assert revisions[0] == revisions[1] == [model_revision(exported_model)]      # named by the published weights


def test_corrupted_export_fails_the_check_and_is_re_encoded(exported_model, exported_chain, base_cache,
                                                             small_task_data, tmp_path, caplog):
    corrupted = tmp_path / "model"
    shutil.copytree(exported_model, corrupted)
    (weights,) = [p for p in corrupted.glob("*_Dense/model.safetensors")]
    state = load_file(weights)
    key = next(k for k in state if k.endswith("weight"))
    state[key][5] *= 1.5                                  # one output coordinate of the head, inside every size
    save_file(state, weights)
    method = SMECCompressor.from_chain(exported_chain, name="smec")
    task = [LocalRetrievalTask.from_data(small_task_data)]
    checks: dict = {}
    with caplog.at_level(logging.WARNING, logger="smec_hf.evaluation.mteb_eval"):
        scores = evaluate_methods([method], base_cache, task, tmp_path / "mteb", model_dirs={"smec": corrupted},
                                  show_progress_bar=False, checks=checks)["smec"]
    check = checks["smec"]
    assert not check.passed and check.max_abs_diff > 1e-3 and check.min_cosine < 1 - 1e-6
    assert "re-encoding every text" in caplog.text and f"{check.max_abs_diff:.2e}" in caplog.text
    direct = evaluate_meta(exported_model_meta(corrupted, DIMS, name="smec"), task, tmp_path / "direct",
                           show_progress_bar=False)
    assert scores == direct                                             # scored through the corrupted folder


def test_sampled_ids_missing_from_the_cache_fail_the_check(exported_model, exported_chain, base_cache,
                                                           small_task_data):
    cache = EmbeddingCache.from_vectors(base_cache.corpus_ids[:1], np.asarray(base_cache.corpus)[:1],
                                        base_cache.query_ids, np.asarray(base_cache.queries))
    check = check_export(FullSizeEncodings(exported_model), SMECCompressor.from_chain(exported_chain), cache,
                         [LocalRetrievalTask.from_data(small_task_data)], sample_size=4)
    assert not check.passed and check.texts == 8 and check.missing >= 3
    assert f"{check.missing} sampled ids not in the embedding cache" in check.describe("smec")
