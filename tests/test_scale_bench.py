"""The scale benchmark's structured sets behave like retrieval data, `smec train` accepts them, and the harness
writes its table (at a tiny size: what is checked is the plumbing, not the timings)."""
import hashlib
import json
from pathlib import Path

import pytest

from benchmarks.scale import ensure_set, growth_exponent, main, outside_phases
from benchmarks.synthetic import load_structured_set, structure_figures, write_structured_set
from smec_hf.data import EmbeddingCache
from smec_hf.data.sources import load_retrieval_data
from smec_hf.pipelines.train import check_covers


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_structured_set_is_deterministic_and_in_the_cache_and_beir_formats(tmp_path):
    key = write_structured_set(tmp_path / "a", 1200, 48, 60, 30, seed=3, chunk_rows=500)
    write_structured_set(tmp_path / "b", 1200, 48, 60, 30, seed=3, chunk_rows=500)
    for name in ("cache/corpus.npy", "cache/queries.npy", "beir/qrels/train.tsv", "beir/qrels/test.tsv"):
        assert digest(tmp_path / "a" / name) == digest(tmp_path / "b" / name), name
    assert json.loads((tmp_path / "a" / "set.json").read_text()) == key
    cache, qrels = load_structured_set(tmp_path / "a")
    assert cache.corpus.shape == (1200, 48) and cache.queries.shape == (90, 48)
    assert abs(float((cache.corpus[:5] ** 2).sum(1).mean()) - 1) < 1e-5
    assert (len(qrels["train"]), len(qrels["test"])) == (60, 30)
    graded = [q for q in qrels["train"].values() if len(q) > 1]
    assert graded and all(sorted(q.values()) == [1, 1, 2] for q in graded)   # a sub-topic: primary 2, siblings 1
    dataset = load_retrieval_data(str(tmp_path / "a" / "beir"))
    check_covers(EmbeddingCache.load(tmp_path / "a" / "cache"), dataset, "--embeddings")   # what smec train checks
    assert dataset.qrels["test"] == qrels["test"]


def test_structured_set_is_neither_solved_nor_noise(tmp_path):
    write_structured_set(tmp_path, 5000, 128, 100, 400)
    figures = structure_figures(tmp_path, dims=(128, 64, 32))
    assert 0.5 < figures["frozen"] < 0.85                    # measured 0.709
    assert figures["pca"][64] < figures["frozen"] - 0.08     # 0.571: small PCA loses information
    assert figures["pca"][32] < figures["pca"][64] - 0.08    # 0.378: and loses more the smaller it is
    assert figures["truncation"][64] < figures["pca"][64]    # 0.350: a random basis, as a non-MRL encoder's


def test_growth_exponent_and_the_time_outside_the_phases():
    assert growth_exponent([1e5, 3e5, 1e6], [10, 30, 100]) == pytest.approx(1.0)
    assert growth_exponent([1e5, 1e6], [10, 10 * 10 ** 1.5]) == pytest.approx(1.5)
    assert growth_exponent([1e5], [10]) is None
    assert outside_phases(10.0, {"embed": 1.0, "train": 5.0, "train_mine": 2.0, "evaluate": 1.0}) == 3.0
    assert outside_phases(10.0, {"train_smec": 4.0, "total": 8.0}) == 2.0
    assert outside_phases(10.0, {}) is None


def test_harness_trains_and_writes_the_table(tmp_path, capsys):
    main(["--sizes", "3000", "--dim", "64", "--train-queries", "300", "--test-queries", "100",
          "--workdir", str(tmp_path), "--train-args", "--max-epochs 2 --dims 64 32"])
    report = json.loads((tmp_path / "scale.json").read_text())
    (row,) = report["rows"]
    assert row["docs"] == 3000 and row["train"]["returncode"] == 0
    assert {"train", "evaluate"} <= set(row["train"]["phases_s"])
    assert [st["levels"] for st in row["train"]["stages"]] == [[64, 32]]
    assert row["train"]["peak_rss_mib"] > 50 and row["train"]["peak_tree_anon_mib"] > 50
    assert 0 < row["train"]["ndcg@10"]["frozen"] < 1
    assert report["machine"]["cores"] >= 1 and "faiss" in report["machine"]
    table = (tmp_path / "scale.md").read_text()
    assert "| stage 64->32 |" in table and "peak RSS - corpus file MiB" in table and "N=3,000" in table
    assert "exponent in N" in capsys.readouterr().out
    assert ensure_set(Path(row["set"]), 3000, 64, 300, 100, seed=0) == (row["set_key"], 0.0)   # reused
    assert ensure_set(Path(row["set"]), 3000, 64, 300, 100, seed=1)[1] > 0                     # other key
