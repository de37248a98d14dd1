"""``mrl_finetune``: the base encoder fine-tuned (LoRA) with MatryoshkaLoss(MNRL), on a tiny random BERT and a tiny
synthetic dataset (seconds): training changes the encoder, the merged export reproduces it at every trained size,
and the method runs through the registry with its vectors served by id."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Dataset
from sentence_transformers import SentenceTransformer

from smec_hf import registry
from smec_hf.engine.encoder_finetune import FinetuneSettings, finetune
from smec_hf.core.retrieval import ndcg_at_10
from smec_hf.data.beir import RetrievalData
from smec_hf.data.cache import EmbeddingCache, load_or_encode
from smec_hf.hf.finetuned import export_finetuned
from smec_hf.pipelines.compare import evaluate_on_cache
from smec_hf.smec.settings import SMECSettings

from engines import engine_order, unit
from tiny_models import WORDS, tiny_bert

DIMS = [32, 16, 8]
TEXTS = {"anchor": ["what cell", "gene risk", "blood protein", "cancer study"],
         "positive": ["the cell of a passage", "risk of the gene", "protein in blood", "a study of cancer"],
         "negative": ["blood and gene", "the effect of cells", "what is a query", "find the passage"]}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_bert(tmp_path_factory.mktemp("tiny") / "bert")


def tiny_dataset(n_docs: int = 40, n_queries: int = 24) -> RetrievalData:
    """Documents of five seeded words; each query is two words of its one relevant document (train), the last
    four queries are test queries."""
    rng = np.random.default_rng(0)
    docs = [" ".join(rng.choice(WORDS, 5)) for _ in range(n_docs)]
    queries = [" ".join(docs[i].split()[1:3]) for i in range(n_queries)]
    qrels = {f"q{i}": {f"d{i}": 1} for i in range(n_queries)}
    train = {q: v for q, v in qrels.items() if int(q[1:]) < n_queries - 4}
    return RetrievalData("tiny", [f"d{i}" for i in range(n_docs)], docs, [f"q{i}" for i in range(n_queries)], queries,
                         {"train": train, "test": {q: v for q, v in qrels.items() if q not in train}})


def test_lora_changes_the_encoder_and_the_merged_export_reproduces_it(tiny_model, tmp_path):
    model = SentenceTransformer(str(tiny_model), device="cpu")
    texts = TEXTS["anchor"] + TEXTS["positive"]
    before = model.encode(texts, convert_to_tensor=True)
    record = finetune(model, Dataset.from_dict(TEXTS), DIMS, FinetuneSettings(lr=1e-2, batch_size=4, max_epochs=2),
                      scale=20.0, seed=0, output_dir=tmp_path / "trainer", show_progress_bar=False)
    assert 0 < record["trainable_parameters"] < record["parameters"] and record["lora"]
    tuned = model.encode(texts, convert_to_tensor=True)
    assert (tuned - before).abs().max() > 1e-3                             # the adapter changed the encoder

    model.save(str(tmp_path / "encoder"), create_model_card=False)
    assert (tmp_path / "encoder" / "adapter_config.json").is_file()        # saved unmerged: the adapter only
    exported = export_finetuned(tmp_path / "encoder", tmp_path / "model", DIMS)
    assert not (exported / "adapter_config.json").exists()                 # merged into plain weights
    assert json.loads((exported / "config.json").read_text())["matryoshka_dimensions"] == sorted(DIMS)
    served = SentenceTransformer(str(exported), device="cpu")
    for k in DIMS:
        expected = model.encode(texts, truncate_dim=k)
        assert np.abs(served.encode(texts, truncate_dim=k) - expected).max() < 1e-5, k
        # pool -> cut -> normalise, as vLLM and TEI serve `dimensions=k`
        assert np.abs(engine_order(served, texts, k) - unit(expected)).max() < 1e-5, k


def test_the_method_runs_through_the_registry(tiny_model, tmp_path):
    data = tiny_dataset()
    cache = load_or_encode(data, str(tiny_model), tmp_path / "cache", show_progress_bar=False)
    settings = SMECSettings(dims=DIMS, hard_negatives=2, hard_negative_pool=4, held_out_fraction=0.25, batch_size=8)
    assert "mrl_finetune" not in registry.check_methods(None)               # opt-in
    assert registry.check_methods(["mrl_finetune", "pca"]) == ["mrl_finetune", "pca"]
    context = registry.BuildContext(DIMS, settings, tmp_path / "run", dataset=data, base_model=str(tiny_model),
                                    show_progress_bar=False)
    method = registry.method("mrl_finetune").build(context).fit(cache, data.qrels["train"])

    record = method.encoder_record
    assert record["trainable_parameters"] < record["parameters"] and record["best_epoch"] >= 1
    assert [h["epoch"] for h in record["history"]] == list(range(1, record["epochs_trained"] + 1))
    assert 0.0 <= record["held_out_ndcg@10"] <= 1.0
    # transform serves the tuned encoder's own vectors of the texts whose base vectors it is given
    tuned = SentenceTransformer(str(method.encoder_dir), device="cpu")
    for k in DIMS:
        docs = tuned.encode_document(data.corpus_texts, truncate_dim=k)
        assert np.abs(method.transform(np.asarray(cache.corpus), k) - docs).max() < 1e-5
        queries = tuned.encode_query(data.query_texts[:3], truncate_dim=k)
        assert np.abs(method.transform(np.asarray(cache.queries[:3]), k) - queries).max() < 1e-5
    with pytest.raises(KeyError, match="no cached text"):
        method.transform(np.asarray(cache.corpus[:2]) + 1.0, DIMS[0])


def test_it_needs_the_base_model(tiny_model, tmp_path):
    data = tiny_dataset()
    cache = EmbeddingCache.from_vectors(data.corpus_ids, torch.randn(len(data.corpus_ids), 32).numpy(),
                                        data.query_ids, torch.randn(len(data.query_ids), 32).numpy())
    context = registry.BuildContext(DIMS, SMECSettings(dims=DIMS), tmp_path, dataset=data, base_model="precomputed")
    with pytest.raises(ValueError, match="needs the texts and the base model"):
        registry.method("mrl_finetune").build(context).fit(cache, data.qrels["train"])


def test_evaluate_scores_it_exports_it_and_reports_its_cost(tiny_model, tmp_path):
    data = tiny_dataset()
    cache = load_or_encode(data, str(tiny_model), tmp_path / "cache", show_progress_bar=False)
    settings = SMECSettings(dims=DIMS, hard_negatives=2, hard_negative_pool=4, held_out_fraction=0.25, batch_size=8)
    report = evaluate_on_cache(cache, data, tmp_path / "out", base_model=str(tiny_model), settings=settings,
                               methods=["mrl_finetune", "truncation"], workers=1, show_progress_bar=False)
    tuned = report["tuned_encoders"]["mrl_finetune"]
    assert tuned["trainable_parameters"] < tuned["parameters"] and report["timings_s"]["train_mrl_finetune"] > 0
    assert "## Fine-tuned encoders" in (tmp_path / "out" / "report.md").read_text()
    # the MTEB row is the exported model's own retrieval at every size
    served = SentenceTransformer(str(tmp_path / "out" / "baselines" / "mrl_finetune" / "model"), device="cpu")
    qrels = data.qrels["test"]
    query_texts = [t for q, t in zip(data.query_ids, data.query_texts) if q in qrels]
    for k in DIMS:
        queries = torch.as_tensor(served.encode_query(query_texts, truncate_dim=k))
        docs = torch.as_tensor(served.encode_document(data.corpus_texts, truncate_dim=k))
        sims = torch.nn.functional.normalize(queries, dim=-1) @ torch.nn.functional.normalize(docs, dim=-1).T
        run = {q: dict(zip(data.corpus_ids, row.tolist())) for q, row in zip(qrels, sims)}
        assert report["ndcg@10"]["mrl_finetune"][str(k)] == pytest.approx(ndcg_at_10(run, qrels), abs=1e-4), k
