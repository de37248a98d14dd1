"""Bring your own data: ST pair/triplet tables, a bare corpus (label-free training), runs with no test split.

Each format is a real SciFact slice rewritten into it; the vectors are the slice's real MiniLM embeddings, looked
up by text (the texts are the same, so the vectors are what encoding would give), except where the test is about
encoding itself.
"""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from datasets import Dataset, DatasetDict

import smec_hf
from smec_hf.cli import main
from smec_hf.data import DatasetFormatError, EmbeddingCache, RetrievalData, load_or_encode, load_retrieval_data
from smec_hf.core.search import frozen_top_k
from smec_hf.data.examples import RankingExamples, probe_documents
from smec_hf.engine.losses import graded_ranking_loss
from smec_hf.hf.export import export_model

FAST = ["--dims", "384", "64", "32", "--max-epochs", "3", "--patience", "2", "--batch-size", "32",
        "--memory-size", "128", "--no-progress"]


def _rows(data, split):
    """(anchor, positive, negative) texts of one split's judged pairs; the negative is the last corpus document the
    query does not judge."""
    text = dict(zip(data.corpus_ids, data.corpus_texts))
    queries = dict(zip(data.query_ids, data.query_texts))
    other = data.corpus_ids[::-1]
    return [{"anchor": queries[q], "positive": text[d], "negative": text[next(o for o in other if o not in docs)]}
            for q, docs in data.qrels[split].items() for d in docs]


def _vectors_by_text(data, cache):
    corpus = dict(zip(data.corpus_texts, np.asarray(cache.corpus)))
    queries = dict(zip(data.query_texts, np.asarray(cache.queries)))
    return {**corpus, **queries}


def _cache_for(dataset, by_text, tmp_path) -> Path:
    """A saved cache of ``dataset``'s own ids with the real vectors of its texts."""
    cache = EmbeddingCache.from_vectors(
        dataset.corpus_ids, np.stack([by_text[t] for t in dataset.corpus_texts]), dataset.query_ids,
        np.array([by_text[t] for t in dataset.query_texts], dtype=np.float32).reshape(len(dataset.query_ids), 384),
        meta={"encoder": {"name": "all-MiniLM-L6-v2"}})
    return cache.save(tmp_path / "vectors")


@pytest.fixture(scope="module")
def by_text(scifact_small, scifact_small_cache):
    return _vectors_by_text(scifact_small, scifact_small_cache)


def _train_cli(data_arg, by_text, tmp_path, *extra):
    dataset = load_retrieval_data(data_arg, corpus=None)
    out = tmp_path / "run"
    code = main(["train", "--data", str(data_arg), "--embeddings", str(_cache_for(dataset, by_text, tmp_path)),
                 "--output", str(out), *FAST, *extra])
    assert code == 0
    return json.loads((out / "smec_run.json").read_text()), out


def test_pairs_jsonl_without_a_test_split_trains_reports_held_out_and_exports(scifact_small, by_text, minilm_path,
                                                                                tmp_path, capsys):
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps({k: r[k] for k in ("anchor", "positive")}) + "\n"
                            for r in _rows(scifact_small, "train")))
    data = load_retrieval_data(path)
    assert list(data.qrels) == ["train"] and all(q.startswith("q-") for q in data.query_ids)
    assert len(set(data.corpus_texts)) == len(data.corpus_texts)          # de-duplicated by text
    run, out = _train_cli(path, by_text, tmp_path)
    printed = capsys.readouterr().out
    assert run["evaluated_on"] == "held_out" and "held-out train queries, no test split" in printed
    assert any("no test split" in note for note in run["notes"])
    assert set(run["results"]["neighbour_recall@10"]["smec"]) == {"384", "64", "32"}
    model = export_model(out, tmp_path / "model", base_model=minilm_path)
    card = (model / "README.md").read_text()
    assert "held-out train queries" in card


def test_triplets_parquet_with_a_corpus_feed_given_negatives(scifact_small, by_text, tmp_path):
    rows = _rows(scifact_small, "train")
    path = tmp_path / "triplets.parquet"
    pd.DataFrame(rows).to_parquet(path)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(t.replace("\n", " ") + "\n" for t in scifact_small.corpus_texts[:200]))
    data = load_retrieval_data(path, corpus=corpus)
    negatives = {d for docs in data.qrels["train"].values() for d, s in docs.items() if s == 0}
    assert negatives and len(data.corpus_ids) > len({d for docs in data.qrels["train"].values() for d in docs})
    texts = {**by_text, **{t.replace("\n", " "): v for t, v in by_text.items()}}
    out = tmp_path / "run"
    cache = _cache_for(data, texts, tmp_path)
    assert main(["train", "--data", str(path), "--corpus", str(corpus), "--embeddings", str(cache), "--output",
                 str(out), *FAST]) == 0
    assert json.loads((out / "smec_run.json").read_text())["evaluated_on"] == "held_out"


def test_given_negatives_change_the_batch_and_the_loss(scifact_small, scifact_small_cache):
    qids = list(scifact_small.qrels["train"])[:8]
    docs = scifact_small_cache.corpus_ids
    plain = {q: dict(scifact_small.qrels["train"][q]) for q in qids}
    given = {q: {**judged, docs[-1 - i]: 0} for i, (q, judged) in enumerate(plain.items())}
    q_index = scifact_small_cache.query_index()
    vectors = scifact_small_cache.queries[[q_index[q] for q in qids]]
    batches = []
    for qrels in (plain, given):
        examples = RankingExamples(qids, vectors, scifact_small_cache.doc_index(), scifact_small_cache.corpus, qrels,
                                   pool_size=5, frozen_top=frozen_top_k(vectors, scifact_small_cache.corpus, 10, 10**9))
        batches.append(examples.batch(torch.arange(len(examples.pairs)), 2, deterministic=True))
    assert len(batches[1].docs) > len(batches[0].docs)                       # the given negatives joined the batch
    assert torch.equal(batches[1].labels.sum(1), batches[0].labels.sum(1))    # ... as non-relevant candidates
    losses = [float(graded_ranking_loss(b.queries, b.docs, b.labels, 20.0)) for b in batches]
    assert losses[0] != pytest.approx(losses[1])


def test_save_to_disk_folder_with_a_test_split_is_scored_on_test(scifact_small, by_text, tmp_path):
    folder = tmp_path / "pairs"
    DatasetDict({split: Dataset.from_list([{k: r[k] for k in ("anchor", "positive")} for r in _rows(scifact_small, split)])
                 for split in ("train", "test")}).save_to_disk(str(folder))
    data = load_retrieval_data(folder)
    assert set(data.qrels) == {"train", "test"}
    assert not set(data.qrels["train"]) & set(data.qrels["test"])
    run, _ = _train_cli(folder, by_text, tmp_path)
    assert run["evaluated_on"] == "test" and set(run["results"]["ndcg@10"]) >= {"smec", "pca", "truncation"}


def test_corpus_only_training_beats_pca_on_neighbour_recall(scifact_small, by_text, minilm_path, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(t.replace("\n", " ") + "\n" for t in scifact_small.corpus_texts))
    data = load_retrieval_data(corpus)
    assert not data.has_queries
    texts = {t.replace("\n", " "): v for t, v in by_text.items()}
    run, out = _train_cli(corpus, texts, tmp_path, "--max-epochs", "12", "--patience", "3")
    recall = run["results"]["neighbour_recall@10"]
    assert run["evaluated_on"] == "none" and "ndcg@10" not in run["results"]
    for dim in ("64", "32"):
        assert recall["smec"][dim] > recall["pca"][dim], (dim, recall)
    assert "neighbour_recall@10" in json.dumps(run["stages"])               # early-stopped without labels
    model = export_model(out, tmp_path / "model", base_model=minilm_path)
    assert "no queries" in (model / "README.md").read_text()


def test_a_beir_folder_holding_only_its_corpus_trains_without_labels(tmp_path):
    """Only corpus.jsonl in the folder: corpus-only data (not "queries.jsonl: missing"), trained on 16-d vectors."""
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "corpus.jsonl").write_text("".join(json.dumps({"_id": f"doc{i}", "title": "", "text": f"document {i}"})
                                                 + "\n" for i in range(40)))
    vectors = np.random.default_rng(0).normal(size=(40, 16)).astype(np.float32)
    cache = EmbeddingCache.from_vectors([f"doc{i}" for i in range(40)], vectors, [], np.zeros((0, 16))).save(
        tmp_path / "vectors")
    out = tmp_path / "run"
    assert main(["train", "--data", str(folder), "--embeddings", str(cache), "--output", str(out), "--dims", "16", "8",
                 "--max-epochs", "2", "--batch-size", "8", "--memory-size", "16", "--no-progress", "--search"]) == 0
    run = json.loads((out / "smec_run.json").read_text())
    assert run["dataset"] == "docs" and run["evaluated_on"] == "none" and "ndcg@10" not in run["results"]
    assert set(run["results"]["neighbour_recall@10"]["smec"]) == {"16", "8"}
    assert "neighbour_recall@10" in json.dumps(run["stages"])               # early-stopped without labels


def test_python_api_trains_on_a_datasets_table_with_a_loaded_model(minilm_path, tmp_path):
    from sentence_transformers import SentenceTransformer

    topics = ["proteins fold", "stars form", "rivers flood", "markets crash", "cells divide", "volcanoes erupt",
              "glaciers melt", "viruses mutate", "planets orbit", "bridges rust", "forests burn", "tides rise"]
    rows = [{"query": f"why do {t}?", "answer": f"An article on how {t}, with causes and effects."} for t in topics]
    model = SentenceTransformer(minilm_path)
    run = smec_hf.train(model, Dataset.from_list(rows), tmp_path / "run", cache_dir=tmp_path / "cache",
                        dims=[384, 32], max_epochs=2, patience=1, batch_size=4, memory_size=16, hard_negatives=2,
                        hard_negative_pool=4, show_progress_bar=False)
    assert run["evaluated_on"] == "held_out" and run["dims"] == [384, 32]
    assert smec_hf.export(tmp_path / "run", tmp_path / "model").joinpath("modules.json").is_file()
    # the cache is keyed on encoder and texts only: the same texts under other ids and no labels are not re-encoded
    data = load_retrieval_data(Dataset.from_list(rows))
    renamed = RetrievalData("renamed", [f"doc{i}" for i in range(len(data.corpus_ids))], data.corpus_texts,
                            [f"query{i}" for i in range(len(data.query_ids))], data.query_texts, {})
    before = sorted(p.name for p in (tmp_path / "cache").iterdir())
    cache = load_or_encode(renamed, minilm_path, tmp_path / "cache")
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == before and cache.path.name in before
    assert cache.corpus_ids == renamed.corpus_ids and cache.query_ids == renamed.query_ids
    with pytest.raises(TypeError, match="unknown setting"):
        smec_hf.train(model, Dataset.from_list(rows), tmp_path / "other", learning_rate=1.0)


@pytest.mark.parametrize("write, message", [
    (lambda p: p.with_suffix(".jsonl").write_text('{"anchor": "a", "positive": "b"}\n{"anchor": "c"}\n'),
     r"pairs\.jsonl: row 2: missing column 'positive'"),
    (lambda p: p.with_suffix(".jsonl").write_text('{"anchor": "a", "positive": "b"}\n{"anchor": " ", "positive": "d"}\n'),
     r"pairs\.jsonl: row 2, column 'anchor': empty text"),
    (lambda p: pd.DataFrame({"s1": ["a", "b"], "s2": ["c", "d"], "label": [1, 0]}).to_parquet(p.with_suffix(".parquet")),
     r"pairs\.parquet: column 'label': .* different training format"),
    (lambda p: p.with_suffix(".parquet").write_bytes(b"not parquet at all"), r"pairs\.parquet: unreadable parquet"),
    (lambda p: p.with_suffix(".txt").write_text("the only document\n"), r"pairs\.txt: needs at least 2 distinct"),
    (lambda p: p.with_suffix(".csv").write_text("q,d\nx,y\nz\n"), r"pairs\.csv: row 3, column 'd': no value"),
])
def test_malformed_input_names_the_place_and_writes_nothing(write, message, tmp_path, capsys):
    write(tmp_path / "pairs")
    path = next(tmp_path.glob("pairs.*"))
    with pytest.raises(DatasetFormatError, match=message):
        load_retrieval_data(path)
    assert main(["train", "--data", str(path), "--output", str(tmp_path / "run"), "--cache-dir",
                 str(tmp_path / "cache")]) == 2
    assert "error:" in capsys.readouterr().err
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()


def test_probe_documents_are_stable_and_left_out_of_label_free_training(scifact_small):
    probes = probe_documents(scifact_small.corpus_ids)
    assert set(probes) == set(probe_documents(list(reversed(scifact_small.corpus_ids))))   # by id, not by order
    assert 0.05 < len(probes) / len(scifact_small.corpus_ids) < 0.15
