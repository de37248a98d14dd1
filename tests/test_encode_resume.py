"""A real kill: an encoding process is SIGKILLed part-way; the rerun, on a 2-process encode pool, resumes.

``tests/test_cache.py`` simulates the interruption inside one process (and a torn chunk file); here the
process really dies, leaving its file lock and partial chunks behind, and the rerun uses
Sentence-Transformers' multi-process encoding.
"""
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
from sentence_transformers import SentenceTransformer

from data_paths import SHARED_SCIFACT
from smec_hf.data import load_or_encode

ROOT = Path(__file__).resolve().parents[1]
CHUNK, MAX_SEQ = 8, 128

# encodes the same subset as the `tiny` data below; the third corpus chunk never finishes, like a process
# that is killed while it works
DIES_IN_CHUNK_3 = textwrap.dedent(f"""
    import sys, time
    from sentence_transformers import SentenceTransformer
    from smec_hf.data import default_base_model, load_beir, load_or_encode
    real, calls = SentenceTransformer.encode_document, []
    def slow_third(self, texts, **kw):
        calls.append(1)
        if len(calls) == 3:
            time.sleep(600)
        return real(self, texts, **kw)
    SentenceTransformer.encode_document = slow_third
    data = load_beir(sys.argv[2]).subset({{"test": 8}}, n_extra_docs=24, seed=0)
    load_or_encode(data, default_base_model(), sys.argv[1], max_seq_length={MAX_SEQ}, chunk_size={CHUNK},
                   show_progress_bar=False)
""")


def _kill_after_two_chunks(cache_dir: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-c", DIES_IN_CHUNK_3, str(cache_dir), str(SHARED_SCIFACT)], env=env,
                            cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 180
        while len(list(cache_dir.glob("partial/*/corpus-*.npy"))) < 2:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the encoding process wrote no chunks"
            time.sleep(0.2)
    finally:
        proc.kill()   # SIGKILL: no cleanup runs
        proc.wait()


def test_killed_encode_resumes_on_a_multi_process_pool(tmp_path, scifact, minilm_path, monkeypatch):
    tiny = scifact.subset({"test": 8}, n_extra_docs=24, seed=0)
    _kill_after_two_chunks(tmp_path / "killed")
    assert {p.name for p in (tmp_path / "killed").iterdir()} == {"partial"}   # no finished cache
    assert len(list((tmp_path / "killed").glob("partial/*.lock"))) == 1      # the dead process's lock is left

    real, calls = SentenceTransformer.encode_document, []

    def spy(self, texts, **kwargs):
        calls.append((len(texts), kwargs["pool"] is not None))
        return real(self, texts, **kwargs)

    monkeypatch.setattr(SentenceTransformer, "encode_document", spy)
    resumed = load_or_encode(tiny, minilm_path, tmp_path / "killed", max_seq_length=MAX_SEQ, chunk_size=CHUNK,
                             show_progress_bar=False, devices=["cpu", "cpu"])
    n_docs = len(tiny.corpus_ids)
    sizes = [min(CHUNK, n_docs - s) for s in range(0, n_docs, CHUNK)]
    assert calls == [(n, True) for n in sizes[2:]]   # the two finished chunks reused, the rest on the pool
    assert [p.name for p in (tmp_path / "killed").iterdir()] == [resumed.path.name]   # lock and partial/ gone

    monkeypatch.setattr(SentenceTransformer, "encode_document", real)
    straight = load_or_encode(tiny, minilm_path, tmp_path / "straight", max_seq_length=MAX_SEQ,
                              chunk_size=CHUNK, show_progress_bar=False)
    assert resumed.path.name == straight.path.name
    assert resumed.corpus_ids == straight.corpus_ids and resumed.query_ids == straight.query_ids
    np.testing.assert_allclose(resumed.corpus, straight.corpus, atol=1e-5)
    np.testing.assert_allclose(resumed.queries, straight.queries, atol=1e-5)


def test_launched_processes_each_encode_their_share_of_one_cache(tmp_path, scifact, minilm_path, monkeypatch):
    """Two processes (as under ``accelerate launch``, threads here) sharing a cache folder: each encodes every
    second chunk, and the assembled cache equals one process's."""
    import threading

    from smec_hf.data import cache as cache_module

    monkeypatch.setattr(cache_module, "SHARD_POLL_S", 0.05)
    tiny = scifact.subset({"test": 8}, n_extra_docs=24, seed=0)
    encoded, calls = {}, []
    real = SentenceTransformer.encode_document
    monkeypatch.setattr(SentenceTransformer, "encode_document",
                        lambda self, texts, **kw: calls.append(threading.current_thread().name) or real(self, texts, **kw))

    def run(index: int) -> None:
        encoded[index] = load_or_encode(tiny, minilm_path, tmp_path / "shared", max_seq_length=MAX_SEQ,
                                        chunk_size=CHUNK, show_progress_bar=False, shard=(index, 2))

    threads = [threading.Thread(target=run, args=(i,), name=f"rank{i}") for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    shared_calls = list(calls)
    alone = load_or_encode(tiny, minilm_path, tmp_path / "alone", max_seq_length=MAX_SEQ, chunk_size=CHUNK,
                           show_progress_bar=False)
    n_chunks = -(-len(tiny.corpus_ids) // CHUNK)
    assert sorted(shared_calls) == sorted([f"rank{i % 2}" for i in range(n_chunks)])     # each chunk once, shared
    for index in range(2):
        np.testing.assert_allclose(np.asarray(encoded[index].corpus), np.asarray(alone.corpus), atol=1e-6)
        np.testing.assert_allclose(np.asarray(encoded[index].queries), np.asarray(alone.queries), atol=1e-6)
