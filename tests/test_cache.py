"""Embedding cache: real MiniLM encodes, cache hits without the model, resume after a kill, validation."""
import json
import shutil
import threading

import numpy as np
import pytest
from filelock import FileLock
from sentence_transformers import SentenceTransformer

from smec_hf.data import CacheFormatError, EmbeddingCache, encoder_identity, load_or_encode
from smec_hf.data.mining import MINED_DIR

MAX_SEQ = 128  # as the scifact_small_cache fixture
CHUNK = 8


class Killed(Exception):
    """Stands in for the process dying part-way through an encode."""


@pytest.fixture(scope="module")
def tiny(scifact):
    """8 real test claims, the abstracts they cite and 24 distractors (about 33 docs: 5 chunks of 8).

    Kept small because MiniLM manages only ~15-20 SciFact abstracts/s on 2 CPU cores.
    """
    return scifact.subset({"test": 8}, n_extra_docs=24, seed=0)


@pytest.fixture(scope="module")
def minilm(minilm_path):
    model = SentenceTransformer(minilm_path)
    model.max_seq_length = MAX_SEQ
    return model


def test_cache_rows_are_the_models_embeddings(scifact_small, scifact_small_cache, minilm, minilm_path):
    cache, data = scifact_small_cache, scifact_small
    assert cache.corpus.shape == (len(data.corpus_ids), 384) and cache.queries.shape == (len(data.query_ids), 384)
    assert cache.corpus.dtype == cache.queries.dtype == np.float32
    assert isinstance(cache.corpus, np.memmap)
    assert cache.corpus_ids == data.corpus_ids and cache.query_ids == data.query_ids
    assert cache.doc_index()[data.corpus_ids[-1]] == len(data.corpus_ids) - 1
    # rows follow id order (across the fixture's 256-row chunks) and equal the model's own pipeline
    rows = np.linspace(0, len(data.corpus_ids) - 1, 6).astype(int).tolist()
    expected = minilm.encode_document([data.corpus_texts[i] for i in rows])
    np.testing.assert_allclose(cache.corpus[rows], expected, atol=1e-5)
    np.testing.assert_allclose(cache.queries[-3:], minilm.encode_query(data.query_texts[-3:]), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(cache.corpus, axis=1), 1.0, atol=1e-5)  # MiniLM's Normalize module
    assert cache.meta["dataset"]["fingerprint"] == data.fingerprint()
    assert cache.meta["encoder"] == encoder_identity(minilm_path)
    assert cache.meta["encode"]["effective_max_seq_length"] == MAX_SEQ
    assert cache.meta["dim"] == cache.dim == 384
    # the cache's own files; the frozen ranking mined by a training run may sit beside them (data.mining)
    assert sorted(p.name for p in cache.path.iterdir() if p.name != MINED_DIR) == [
        "corpus.npy", "ids.json", "meta.json", "queries.npy"]


def test_cache_hit_never_loads_the_model(scifact_small, scifact_small_cache, minilm_path, monkeypatch):
    def no_model(*args, **kwargs):
        raise AssertionError("SentenceTransformer was constructed")

    monkeypatch.setattr(SentenceTransformer, "__init__", no_model)
    again = load_or_encode(scifact_small, minilm_path, scifact_small_cache.path.parent, max_seq_length=MAX_SEQ)
    assert again.path == scifact_small_cache.path
    np.testing.assert_array_equal(again.corpus, scifact_small_cache.corpus)
    np.testing.assert_array_equal(again.queries, scifact_small_cache.queries)
    # other settings or other data are other keys, which would need the model
    with pytest.raises(AssertionError, match="constructed"):
        load_or_encode(scifact_small, minilm_path, scifact_small_cache.path.parent, max_seq_length=64)
    with pytest.raises(AssertionError, match="constructed"):
        load_or_encode(scifact_small.subset(2, 1), minilm_path, scifact_small_cache.path.parent, max_seq_length=MAX_SEQ)


def test_concurrent_run_waits_for_the_encoding_one(tmp_path, scifact_small, scifact_small_cache, minilm_path,
                                                   monkeypatch):
    """A second run with the same key blocks on the lock, then loads what the first wrote: no second encode."""
    def no_model(*args, **kwargs):
        raise AssertionError("SentenceTransformer was constructed")

    monkeypatch.setattr(SentenceTransformer, "__init__", no_model)
    key = scifact_small_cache.path.name  # the key does not depend on cache_dir
    (tmp_path / "partial").mkdir()
    result = {}

    def second_run():
        result["cache"] = load_or_encode(scifact_small, minilm_path, tmp_path, max_seq_length=MAX_SEQ)

    with FileLock(tmp_path / "partial" / f"{key}.lock"):  # the "first run", still encoding
        waiting = threading.Thread(target=second_run)
        waiting.start()
        waiting.join(timeout=1.0)
        assert waiting.is_alive()
        scifact_small_cache.save(tmp_path / key)
    waiting.join(timeout=30)
    assert result["cache"].path == tmp_path / key
    np.testing.assert_array_equal(result["cache"].corpus, scifact_small_cache.corpus)
    assert [p.name for p in tmp_path.iterdir()] == [key]  # lock file and partial/ cleaned up


def encode(data, minilm_path, cache_dir):
    return load_or_encode(data, minilm_path, cache_dir, max_seq_length=MAX_SEQ, chunk_size=CHUNK,
                          show_progress_bar=False)


def test_killed_encode_resumes_and_matches_uninterrupted_run(tmp_path, tiny, minilm_path, monkeypatch):
    real = SentenceTransformer.encode_document
    calls = []

    def dies_after_two_chunks(self, texts, **kwargs):
        if len(calls) == 2:
            raise Killed
        calls.append(len(texts))
        return real(self, texts, **kwargs)

    monkeypatch.setattr(SentenceTransformer, "encode_document", dies_after_two_chunks)
    with pytest.raises(Killed):
        encode(tiny, minilm_path, tmp_path / "resumed")
    chunks = sorted((tmp_path / "resumed" / "partial").glob("*/corpus-*.npy"))
    assert [p.name for p in (tmp_path / "resumed").iterdir()] == ["partial"]  # no final cache yet
    assert len(chunks) == 2
    # a kill during a chunk write leaves a torn file: it must be re-encoded, the intact one reused
    chunks[1].write_bytes(chunks[1].read_bytes()[:200])

    n_docs = len(tiny.corpus_ids)
    sizes = [min(CHUNK, n_docs - s) for s in range(0, n_docs, CHUNK)]
    assert len(sizes) >= 4
    calls.clear()
    monkeypatch.setattr(SentenceTransformer, "encode_document",
                        lambda self, texts, **kw: calls.append(len(texts)) or real(self, texts, **kw))
    resumed = encode(tiny, minilm_path, tmp_path / "resumed")
    assert calls == sizes[1:]  # chunk 0 reused; the torn chunk 1 and the rest encoded
    assert [p.name for p in (tmp_path / "resumed").iterdir()] == [resumed.path.name]  # partial/ cleaned up

    straight = encode(tiny, minilm_path, tmp_path / "straight")
    assert straight.path.name == resumed.path.name
    assert resumed.corpus_ids == straight.corpus_ids == tiny.corpus_ids
    assert resumed.query_ids == straight.query_ids == tiny.query_ids
    np.testing.assert_allclose(resumed.corpus, straight.corpus, atol=1e-6)
    np.testing.assert_allclose(resumed.queries, straight.queries, atol=1e-6)


def test_cached_embeddings_retrieve_cited_abstracts(scifact_small, scifact_small_cache):
    cache = scifact_small_cache
    # real embeddings in the right rows: most test claims find a cited abstract in their top 10
    docs, queries = cache.doc_index(), cache.query_index()
    test = scifact_small.qrels["test"]
    scores = cache.queries[[queries[q] for q in test]] @ cache.corpus.T
    top10 = np.argsort(-scores, axis=1)[:, :10]
    hits = [any(docs[d] in row for d in test[q]) for q, row in zip(test, top10)]
    assert np.mean(hits) > 0.7


def test_from_vectors_save_load_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    corpus, queries = rng.normal(size=(5, 8)), rng.normal(size=(2, 8))
    cache = EmbeddingCache.from_vectors(["a", "b", "c", "d", "e"], corpus, ["q1", "q2"], queries, {"encoder": "clip"})
    assert cache.corpus.dtype == np.float32 and cache.dim == 8
    assert cache.meta["encoder"] == "clip" and cache.meta["dim"] == 8 and "created" in cache.meta
    path = cache.save(tmp_path / "vectors")
    loaded = EmbeddingCache.load(path)
    assert isinstance(loaded.corpus, np.memmap) and loaded.path == path
    np.testing.assert_array_equal(loaded.corpus, corpus.astype(np.float32))
    assert loaded.query_index() == {"q1": 0, "q2": 1} and loaded.meta == cache.meta
    # saving over an existing cache replaces it whole and leaves no temporary folders behind
    EmbeddingCache.from_vectors(["z"], np.ones((1, 3)), [], np.zeros((0, 3))).save(path)
    replaced = EmbeddingCache.load(path)
    assert replaced.corpus_ids == ["z"] and replaced.queries.shape == (0, 3)
    assert [p.name for p in tmp_path.iterdir()] == ["vectors"]


BAD_VECTORS = [
    (dict(corpus=np.ones(3)), "corpus must be a 2-D array"),
    (dict(corpus=np.ones((2, 4))), "corpus has 2 rows but corpus_ids has 3 ids"),
    (dict(queries=np.ones((2, 5))), "queries has dim 5 but corpus has dim 4"),
    (dict(queries=np.array([[0.0] * 4, [np.nan] * 4])), "queries row 1 (id 'q2') has NaN"),
    (dict(corpus=np.full((3, 4), 1e300)), "corpus row 0 (id 'a') has NaN or infinite values (after casting"),
    (dict(corpus=np.array([["x"] * 4] * 3)), "corpus must hold real numbers"),
    (dict(corpus_ids=["a", "b", "a"]), "corpus_ids contains the id 'a' twice"),
    (dict(query_ids=["q1", 2]), "query_ids[1] is 2, not a string"),
    (dict(corpus_ids="abc"), "corpus_ids must be a list of strings"),
    (dict(corpus_ids=[], corpus=np.ones((0, 4))), "corpus_ids is empty"),
]


@pytest.mark.parametrize("change,message", BAD_VECTORS, ids=[m for _, m in BAD_VECTORS])
def test_from_vectors_rejects_bad_input(change, message):
    args = dict(corpus_ids=["a", "b", "c"], corpus=np.ones((3, 4)), query_ids=["q1", "q2"], queries=np.ones((2, 4)))
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        EmbeddingCache.from_vectors(**{**args, **change})


def _truncate(path):
    path.write_bytes(path.read_bytes()[:100])


CORRUPTIONS = [
    # (file to damage, how, file the error must name, message fragment)
    ("meta.json", lambda p: p.unlink(), "meta.json", "missing"),
    ("meta.json", lambda p: p.write_text("{not json"), "meta.json", "unreadable"),
    ("meta.json", lambda p: p.write_text("{}"), "meta.json", "integer 'dim'"),
    ("meta.json", lambda p: p.write_text(json.dumps({"dim": 7})), "corpus.npy", "expected float32 (4, 7)"),
    ("ids.json", lambda p: p.write_text(json.dumps({"corpus": list("aacd"), "queries": []})), "ids.json", "twice"),
    ("ids.json", lambda p: p.write_text("[]"), "ids.json", "expected an object"),
    ("corpus.npy", _truncate, "corpus.npy", "unreadable"),
    ("queries.npy", lambda p: np.save(p, np.zeros((3, 3), np.float32)), "queries.npy", "found float32 (3, 3)"),
    ("queries.npy", lambda p: np.save(p, np.zeros((2, 3), np.float64)), "queries.npy", "found float64"),
]


@pytest.mark.parametrize("damaged,corrupt,named,message", CORRUPTIONS, ids=[f"{d}-{m}" for d, _, _, m in CORRUPTIONS])
def test_load_names_the_corrupt_file(tmp_path, damaged, corrupt, named, message):
    path = EmbeddingCache.from_vectors(list("abcd"), np.ones((4, 3)), ["q", "r"], np.ones((2, 3))).save(tmp_path / "c")
    corrupt(path / damaged)
    with pytest.raises(CacheFormatError) as info:
        EmbeddingCache.load(path)
    assert str(info.value).startswith(f"{path / named}: ") and message in str(info.value)


def test_encoder_identity_is_content_based_and_cheap(tmp_path, minilm_path):
    minilm = encoder_identity(minilm_path)
    assert minilm["kind"] == "local" and len(minilm["fingerprint"]) == 64
    assert encoder_identity(minilm_path) == minilm

    model = tmp_path / "model"
    (model / "1_Pooling").mkdir(parents=True)
    (model / "config.json").write_text('{"hidden_size": 8}')
    (model / "1_Pooling" / "config.json").write_text('{"pooling_mode_mean_tokens": true}')
    (model / "model.safetensors").write_bytes(bytes(range(256)) * 8192)  # 2 MiB
    base = encoder_identity(str(model))["fingerprint"]
    shutil.copytree(model, tmp_path / "moved")
    assert encoder_identity(str(tmp_path / "moved"))["fingerprint"] == base  # location does not matter
    (model / "README.md").write_text("docs only")
    assert encoder_identity(str(model))["fingerprint"] == base
    (model / "1_Pooling" / "config.json").write_text('{"pooling_mode_cls_token": true}')
    pooling_changed = encoder_identity(str(model))["fingerprint"]
    (model / "model.safetensors").write_bytes(b"\1" + bytes(range(256)) * 8192)
    assert len({base, pooling_changed, encoder_identity(str(model))["fingerprint"]}) == 3

    hub = encoder_identity("sentence-transformers/all-MiniLM-L6-v2")
    assert hub["kind"] == "hub" and hub["name"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert hub["fingerprint"] != encoder_identity("sentence-transformers/all-mpnet-base-v2")["fingerprint"]


def test_bad_encode_settings_are_rejected(scifact_small, tmp_path):
    with pytest.raises(ValueError, match="must be >= 1"):
        load_or_encode(scifact_small, cache_dir=tmp_path, chunk_size=0)
