"""The evaluate/demo job end to end on a tiny real subset: every method trained and scored with MTEB, every
output written, and the report's SMEC row equal to what the exported model scores with ``truncate_dim``."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer

from smec_hf import registry
from smec_hf.core.retrieval import cosine_top_k, ndcg_at_10
from smec_hf.data.beir import RetrievalData
from smec_hf.data.cache import EmbeddingCache
from smec_hf.engine.loop import Schedule
from smec_hf.evaluation.report import validate_report
from smec_hf.pipelines.compare import evaluate, evaluate_on_cache
from smec_hf.pipelines.fitting import FitJob, fit_methods, run_fit_jobs
from smec_hf.smec.settings import SMECSettings

DIMS = [384, 128, 32]
FAST = SMECSettings(dims=DIMS, max_epochs=2, patience=1, memory_size=256)
DEFAULT_METHODS = registry.check_methods(None)   # what the demo runs (opt-in methods, e.g. mrl_finetune, left out)


@pytest.fixture(scope="module")
def tiny(scifact_small: RetrievalData, scifact_small_cache: EmbeddingCache) -> tuple[RetrievalData, EmbeddingCache]:
    """24 train + 8 test queries, their documents, and each test query's 8 nearest other documents as hard
    distractors (so nDCG@10 is not trivially 1); vectors sliced from the small cache, no encoding."""
    base = scifact_small.subset({"train": 24, "test": 8}, n_extra_docs=0, seed=2)
    docs, queries = scifact_small_cache.doc_index(), scifact_small_cache.query_index()
    test_queries = scifact_small_cache.queries[[queries[q] for q in base.qrels["test"]]]
    _, nearest = cosine_top_k(torch.as_tensor(np.asarray(test_queries)), scifact_small_cache.corpus, k=8)
    keep = set(base.corpus_ids) | {scifact_small_cache.corpus_ids[j] for j in nearest.flatten().tolist()}
    corpus = [(d, t) for d, t in zip(scifact_small.corpus_ids, scifact_small.corpus_texts) if d in keep]
    data = RetrievalData("tiny", [d for d, _ in corpus], [t for _, t in corpus], base.query_ids, base.query_texts,
                         base.qrels)
    cache = EmbeddingCache.from_vectors(
        data.corpus_ids, scifact_small_cache.corpus[[docs[d] for d in data.corpus_ids]],
        data.query_ids, scifact_small_cache.queries[[queries[q] for q in data.query_ids]])
    return data, cache


@pytest.fixture(scope="module")
def demo(tiny, minilm_path: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    data, cache = tiny
    out = tmp_path_factory.mktemp("demo")
    report = evaluate_on_cache(cache, data, out, base_model=minilm_path, settings=FAST,
                               schedule=Schedule(max_epochs=4, patience=2), show_progress_bar=False)
    return report, out


def test_every_method_every_dim_and_every_file(demo, capsys):
    report, out = demo
    validate_report(report)
    assert list(report["ndcg@10"]) == DEFAULT_METHODS and report["dims"] == DIMS
    assert report == json.loads((out / "report.json").read_text())
    steps = {"train_smec", "train_search_adaptor", "export", "mteb_smec", "mteb_pca", "total"}
    assert steps <= set(report["timings_s"])
    assert report["frozen_full_dim"] == report["ndcg@10"]["truncation"]["384"]
    recall = report["neighbour_recall@10"]
    assert list(recall) == DEFAULT_METHODS and recall["truncation"]["384"] == 1.0   # label-free, every method
    assert "Neighbour recall@10" in (out / "report.md").read_text()
    assert "Neighbour recall@10" in (out / "model" / "README.md").read_text()
    assert (out / "report.md").read_text().count("**") >= 2 * len(DIMS)
    assert (out / "ndcg_vs_dim.png").read_bytes()[:4] == b"\x89PNG"
    card = (out / "model" / "README.md").read_text()
    assert "matryoshka_adaptor" in card and "search_adaptor" in card and "smec_no_sxbm" in card
    run = json.loads((out / "model" / "smec_run.json").read_text())
    assert run["results"]["ndcg@10"]["mrl_joint"] == report["ndcg@10"]["mrl_joint"]
    assert (out / "model" / "ndcg_vs_dim.png").is_file()
    results = out / "mteb" / "results"
    assert {p.name for p in results.iterdir()} == {f"smec-hf__{m}" for m in DEFAULT_METHODS}
    experiments = list((results / "smec-hf__smec").glob("*/experiments/embed_dim_*/LocalRetrieval-*.json"))
    assert len(experiments) == len(DIMS)


def test_the_per_byte_view_grid_csr_bytes_and_intervals(demo):
    report, out = demo
    grid = report["precision_grid"]["methods"]
    assert set(grid) == set(DEFAULT_METHODS)
    assert set(grid["smec"]) == {"float32", "int8", "binary"} and list(grid["csr"]) == ["float32"]
    for d in DIMS:
        assert grid["csr"]["float32"][str(d)]["index_bytes"] <= 4 * d       # sparse codes within the dense bytes
        assert grid["smec"]["binary"][str(d)]["index_bytes"] == d // 8
        # exact float32 search on the cached vectors = the MTEB score of a method scored on those vectors
        assert grid["pca"]["float32"][str(d)]["ndcg@10"] == pytest.approx(report["ndcg@10"]["pca"][str(d)], abs=1e-4)
    intervals = report["paired_intervals"]
    assert set(intervals) == set(DEFAULT_METHODS) - {"smec"}
    assert all(c["low"] <= c["diff"] <= c["high"] and c["significant"] == (c["low"] > 0 or c["high"] < 0)
               for by_dim in intervals.values() for c in by_dim.values())
    markdown = (out / "report.md").read_text()
    assert "## Best nDCG@10 for N bytes per vector" in markdown and "paired 95% intervals" in markdown
    assert (out / "ndcg_vs_bytes.png").read_bytes()[:4] == b"\x89PNG"
    assert "int8, rescored" in (out / "model" / "README.md").read_text()


def test_the_do_no_harm_choice_reaches_the_report_and_the_card(demo):
    report, out = demo
    run = json.loads((out / "run" / "smec_run.json").read_text())
    assert report["head_choice"] == {"smec": run["head_choice"]}      # the exported method's, as its run has it
    assert f"## Do no harm: smec on the {run['head_choice']['split']}" in (out / "report.md").read_text()
    assert "**Do no harm.**" in (out / "model" / "README.md").read_text()


def test_smec_row_equals_the_exported_model_with_truncate_dim(demo, tiny):
    report, out = demo
    data, _ = tiny
    qrels = data.qrels["test"]
    model = SentenceTransformer(str(out / "model"), device="cpu")
    query_ids = [q for q in data.query_ids if q in qrels]
    query_texts = [t for q, t in zip(data.query_ids, data.query_texts) if q in qrels]
    smec = report["ndcg@10"]["smec"]
    assert min(smec.values()) < 0.95                              # not a saturated toy: ranking matters
    for dim in DIMS:
        queries = model.encode_query(query_texts, truncate_dim=dim, convert_to_tensor=True)
        docs = model.encode_document(data.corpus_texts, truncate_dim=dim, convert_to_tensor=True)
        sims = torch.nn.functional.normalize(queries, dim=-1) @ torch.nn.functional.normalize(docs, dim=-1).T
        run = {q: dict(zip(data.corpus_ids, row.tolist())) for q, row in zip(query_ids, sims)}
        assert smec[str(dim)] == pytest.approx(ndcg_at_10(run, qrels), abs=1e-4), dim


def test_ablations_are_smec_configurations(tmp_path):
    context = registry.BuildContext(DIMS, FAST, tmp_path)
    no_ads = registry.method("smec_no_ads").build(context)
    no_sxbm = registry.method("smec_no_sxbm").build(context)
    assert (no_ads.name, no_ads.settings.use_ads, no_ads.settings.use_sxbm) == ("smec_no_ads", False, True)
    assert (no_sxbm.name, no_sxbm.settings.use_ads, no_sxbm.settings.use_sxbm) == ("smec_no_sxbm", True, False)
    assert FAST.use_ads and FAST.use_sxbm                         # the shared settings are not modified
    mrl = registry.method("mrl_joint").build(context)
    assert type(mrl.config).__name__ == "FitConfig" and mrl.config.dims == DIMS   # baselines get the shared part


def test_method_selection_and_errors(tiny, tmp_path):
    assert registry.check_methods(["pca", "smec"]) == ["smec", "pca"]
    with pytest.raises(ValueError, match="--methods: unknown \\['bogus'\\]"):
        registry.check_methods(["pca", "bogus"])
    data, cache = tiny
    with pytest.raises(ValueError, match="--dims must start at the embedding dimension 384"):
        evaluate_on_cache(cache, data, tmp_path, base_model=None, dims=[256, 32], methods=["pca"])
    partial = EmbeddingCache.from_vectors(cache.corpus_ids[1:], cache.corpus[1:], cache.query_ids, cache.queries)
    with pytest.raises(ValueError, match="1 documents and 0 judged queries have no vector"):
        evaluate_on_cache(partial, data, tmp_path, base_model=None, methods=["pca"])


def test_precomputed_vectors_without_a_model(tiny, tmp_path):
    """--embeddings: frozen baselines only, no encoder anywhere (the cache is all there is)."""
    data, cache = tiny
    saved = cache.save(tmp_path / "vectors")
    report = evaluate(tmp_path / "out", data=data, embeddings=saved, dims=DIMS, methods=["pca", "truncation"],
                      show_progress_bar=False)
    assert list(report["ndcg@10"]) == ["pca", "truncation"] and not (tmp_path / "out" / "model").exists()
    assert report["base_model"] == "precomputed"
    assert np.isclose(report["frozen_full_dim"], report["ndcg@10"]["truncation"]["384"])


def test_parallel_fitting_gives_what_one_process_gives(tiny, tmp_path):
    """Workers are spawned processes, each method seeded on its own: same threads, same heads."""
    data, cache = tiny
    names = ["mrl_joint", "smec_no_sxbm", "pca"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)                     # what each of 2 workers gets on a 2-core machine
    try:
        fitted = {workers: fit_methods(names, cache, data, tmp_path / str(workers), DIMS, FAST, Schedule(4, 2),
                                       "tiny-encoder", None, workers=workers, show_progress_bar=False)[0]
                  for workers in (1, 2)}
    finally:
        torch.set_num_threads(threads)
    x = np.asarray(cache.corpus[:5])
    for name in names:
        for dim in DIMS:
            np.testing.assert_allclose(fitted[1][name].transform(x, dim), fitted[2][name].transform(x, dim), atol=1e-5)
    with pytest.raises(ValueError, match="--workers"):
        fit_methods(names, cache, data, tmp_path, DIMS, FAST, None, "tiny-encoder", None, workers=0)


def test_each_job_a_worker_finishes_is_handed_over_once(tiny, tmp_path):
    """``on_done`` sees every job once, with the result the call returns (what the seeds benchmark saves; in one
    process the seeds benchmark's tests cover it)."""
    data, cache = tiny
    jobs = [FitJob(name, cache, data, tmp_path / name, DIMS, FAST, None, "tiny-encoder", None, False)
            for name in ("pca", "truncation", "pca")]
    seen: dict[int, tuple] = {}
    results = run_fit_jobs(jobs, 2, show_progress_bar=False, on_done=lambda i, result: seen.setdefault(i, result))
    assert sorted(seen) == [0, 1, 2]
    assert all(seen[i] is results[i] for i in seen)
