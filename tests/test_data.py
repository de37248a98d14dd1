"""BEIR loading, validation, the shared SciFact, subsets and deterministic splits."""
import gzip
import hashlib
import json
import lzma
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from smec_hf.data import (
    DatasetFormatError,
    RetrievalData,
    held_out_split,
    load_beir,
    load_hf_dataset,
    load_retrieval_data,
)

from data_paths import SHARED_DATA, SHARED_SCIFACT

CORPUS = [
    '{"_id": "d1", "title": "Alpha", "text": "first doc"}',
    '{"_id": "d2", "title": "", "text": "second doc"}',
    '{"_id": "d3", "title": "Only a title"}',
    '{"_id": "d4", "title": "Delta", "text": "fourth doc", "metadata": {}}',
    '{"_id": "d5", "title": "Epsilon", "text": "never judged"}',
]
QUERIES = [
    '{"_id": "q1", "text": "query one"}',
    '{"_id": "q2", "text": "query two"}',
    '{"_id": "q3", "text": "query three"}',
    '{"_id": "q4", "text": "query four"}',
    '{"_id": "q5", "text": "never judged"}',
]
HEADER = "query-id\tcorpus-id\tscore"
QRELS = {"train": [HEADER, "q1\td1\t1", "q2\td2\t1"], "test": [HEADER, "q3\td3\t1", "q4\td4\t2", "q4\td1\t0"]}


def write_beir(root: Path, corpus=CORPUS, queries=QUERIES, qrels=QRELS, suffix: str = "") -> Path:
    """A small BEIR folder from raw lines, so tests can put any malformed line anywhere."""
    open_ = {"": open, ".gz": gzip.open, ".xz": lzma.open}[suffix]
    (root / "qrels").mkdir(parents=True, exist_ok=True)
    for name, lines in [("corpus.jsonl", corpus), ("queries.jsonl", queries)] + [
        (f"qrels/{split}.tsv", rows) for split, rows in qrels.items()
    ]:
        with open_(root / (name + suffix), "wt", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
    return root


def replaced(lines, line_no: int, new: str) -> list:
    return [new if i == line_no else line for i, line in enumerate(lines, 1)]


def test_small_folder_loads_with_beir_text_rules(tmp_path):
    data = load_beir(write_beir(tmp_path / "tiny"))
    assert data.name == "tiny"
    assert data.corpus_ids == ["d1", "d2", "d3", "d4", "d5"]
    assert data.corpus_texts == [
        "Alpha first doc", "second doc", "Only a title", "Delta fourth doc", "Epsilon never judged"
    ]
    assert data.query_ids == ["q1", "q2", "q3", "q4"]  # q5 is in no qrels split
    assert data.query_texts == ["query one", "query two", "query three", "query four"]
    assert data.qrels == {
        "train": {"q1": {"d1": 1}, "q2": {"d2": 1}},
        "test": {"q3": {"d3": 1}, "q4": {"d4": 2, "d1": 0}},
    }
    assert data.notes == ()
    assert data.split_query_ids("test") == ["q3", "q4"]


def test_compressed_files_load_identically(tmp_path):
    plain = load_beir(write_beir(tmp_path / "plain"))
    for suffix in (".gz", ".xz"):
        packed = load_beir(write_beir(tmp_path / f"packed{suffix}", suffix=suffix), name="plain")
        assert packed == plain
    broken = write_beir(tmp_path / "broken", corpus=replaced(CORPUS, 4, "{oops"), suffix=".gz")
    with pytest.raises(DatasetFormatError, match=r"corpus\.jsonl\.gz, line 4: malformed JSON"):
        load_beir(broken)


BAD_LINES = [
    # (what, file, line, replacement, message fragment)
    ("malformed JSON", "corpus.jsonl", 3, '{"_id": "d3", "text": ', "malformed JSON"),
    ("not an object", "queries.jsonl", 1, '["q1", "query one"]', "expected a JSON object"),
    ("missing _id", "queries.jsonl", 2, '{"text": "query two"}', "'_id'"),
    ("duplicate doc id", "corpus.jsonl", 4, '{"_id": "d1", "text": "again"}', "duplicate id 'd1' (first on line 1)"),
    ("duplicate query id", "queries.jsonl", 3, '{"_id": "q2", "text": "x"}', "duplicate id 'q2'"),
    ("empty document", "corpus.jsonl", 2, '{"_id": "d2", "title": "", "text": "  "}', "empty text for id 'd2'"),
    ("empty query", "queries.jsonl", 3, '{"_id": "q3", "text": ""}', "empty text for id 'q3'"),
    ("non-string text", "corpus.jsonl", 1, '{"_id": "d1", "text": 7}', "must be strings"),
    ("qrels header", "qrels/train.tsv", 1, "qid\tdid\tscore", "expected the header"),
    ("two columns", "qrels/train.tsv", 3, "q2\td2", "expected 3 tab-separated columns"),
    ("four columns", "qrels/test.tsv", 2, "q3\td3\t1\t0", "got 4"),
    ("word score", "qrels/test.tsv", 3, "q4\td4\thigh", "score 'high' is not an integer"),
    ("fractional score", "qrels/test.tsv", 3, "q4\td4\t0.5", "score '0.5' is not an integer"),
    ("unknown query", "qrels/train.tsv", 2, "q9\td1\t1", "query id 'q9' is not in queries.jsonl"),
    ("unknown document", "qrels/test.tsv", 4, "q4\td99\t1", "corpus id 'd99' is not in corpus.jsonl"),
    ("conflicting scores", "qrels/test.tsv", 4, "q4\td4\t1", "conflicting scores"),
]


@pytest.mark.parametrize("what,file,line,new,fragment", BAD_LINES, ids=[case[0] for case in BAD_LINES])
def test_bad_line_names_file_and_line(tmp_path, what, file, line, new, fragment):
    files = {"corpus.jsonl": CORPUS, "queries.jsonl": QUERIES, **{f"qrels/{s}.tsv": r for s, r in QRELS.items()}}
    files[file] = replaced(files[file], line, new)
    root = write_beir(
        tmp_path, files["corpus.jsonl"], files["queries.jsonl"], {s: files[f"qrels/{s}.tsv"] for s in QRELS}
    )
    with pytest.raises(DatasetFormatError) as info:
        load_beir(root)
    message = str(info.value)
    assert message.startswith(f"{root / file}, line {line}: "), message
    assert fragment in message
    assert info.value.line == line


def test_missing_files_are_named(tmp_path):
    root = write_beir(tmp_path / "d")
    (root / "queries.jsonl").unlink()
    with pytest.raises(DatasetFormatError, match=re.escape(str(root / "queries.jsonl")) + ": missing"):
        load_beir(root)
    root = write_beir(tmp_path / "e")
    (root / "corpus.jsonl").unlink()
    with pytest.raises(DatasetFormatError, match=re.escape(str(root / "corpus.jsonl")) + ": missing"):
        load_beir(root)
    root = write_beir(tmp_path / "f", qrels={})
    with pytest.raises(DatasetFormatError, match=re.escape(str(root / "qrels")) + ": no qrels files"):
        load_beir(root)
    root = write_beir(tmp_path / "g", qrels={"test": [HEADER]})
    with pytest.raises(DatasetFormatError, match=re.escape(str(root / "qrels" / "test.tsv")) + ": no judgments"):
        load_beir(root)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_beir(tmp_path / "nowhere")


def test_plain_and_compressed_copy_together_is_ambiguous(tmp_path):
    root = write_beir(tmp_path)
    with gzip.open(root / "corpus.jsonl.gz", "wt") as f:
        f.write(CORPUS[0] + "\n")
    with pytest.raises(DatasetFormatError, match="ambiguous: found corpus.jsonl, corpus.jsonl.gz"):
        load_beir(root)


def test_missing_split_names_available_splits(tmp_path):
    data = load_beir(write_beir(tmp_path))
    with pytest.raises(DatasetFormatError, match=r"no 'dev' split; available splits: train, test"):
        data.split_query_ids("dev")
    with pytest.raises(DatasetFormatError, match="no 'dev' split"):
        data.subset({"dev": 1}, 0)


def test_missing_train_split_is_made_from_test_queries(tmp_path):
    rows = [f"q{i}\td{1 + i % 5}\t1" for i in range(1, 21)]
    queries = [json.dumps({"_id": f"q{i}", "text": f"claim {i}"}) for i in range(1, 21)]
    data = load_beir(write_beir(tmp_path / "a", queries=queries, qrels={"test": [HEADER, *rows]}))
    train, test = data.split_query_ids("train"), data.split_query_ids("test")
    assert len(train) == len(test) == 10
    assert not set(train) & set(test)
    assert set(train) | set(test) == {f"q{i}" for i in range(1, 21)}
    assert data.notes == (
        f"no train split in {tmp_path / 'a'}: 10 of 20 test queries moved to train "
        "(chosen by sha256 of the query id, seed 0); 10 remain in test",
    )
    # the same queries move whatever the row order in the file
    shuffled = [HEADER, *random.Random(1).sample(rows, len(rows))]
    again = load_beir(write_beir(tmp_path / "b", queries=queries, qrels={"test": shuffled}))
    assert set(again.split_query_ids("train")) == set(train)


def test_query_judged_in_train_and_test_is_dropped_from_train(tmp_path):
    qrels = {"train": [HEADER, "q1\td1\t1", "q3\td2\t1"], "test": QRELS["test"]}
    data = load_beir(write_beir(tmp_path, qrels=qrels))
    assert data.split_query_ids("train") == ["q1"]
    assert data.split_query_ids("test") == ["q3", "q4"]
    assert "1 train queries" in data.notes[0]
    only_leaked = {"train": [HEADER, "q3\td2\t1"], "test": QRELS["test"]}
    with pytest.raises(DatasetFormatError, match="no queries left in split train"):
        load_beir(write_beir(tmp_path / "leaky", qrels=only_leaked))


def test_fingerprint_is_content_only_and_stable_across_processes(tmp_path):
    root = write_beir(tmp_path / "fp")
    data = load_beir(root)
    code = (
        "import sys; from smec_hf.data import load_beir, held_out_split; d = load_beir(sys.argv[1]); "
        "print(d.fingerprint()); print(held_out_split([str(i) for i in range(50)], 0.2, seed=3)[1])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(root)], capture_output=True, text=True, check=True,
        env={"PYTHONHASHSEED": "12345", "PATH": ""}, cwd=Path(__file__).resolve().parents[1],
    ).stdout.splitlines()
    assert out[0] == data.fingerprint()
    assert out[1] == str(held_out_split([str(i) for i in range(50)], 0.2, seed=3)[1])
    assert re.fullmatch(r"[0-9a-f]{64}", data.fingerprint())
    assert load_beir(root, name="other").fingerprint() == data.fingerprint()
    rescored = {**data.qrels, "test": {"q3": {"d3": 2}, "q4": {"d4": 2}}}
    changed_score = RetrievalData(**{**data.__dict__, "qrels": rescored})
    changed_text = RetrievalData(**{**data.__dict__, "corpus_texts": [*data.corpus_texts[:-1], "other"]})
    assert len({data.fingerprint(), changed_score.fingerprint(), changed_text.fingerprint()}) == 3


def test_mismatched_lengths_are_rejected():
    with pytest.raises(ValueError, match="2 corpus ids but 1 corpus texts"):
        RetrievalData("x", ["a", "b"], ["text"], [], [], {})


def test_hub_layout_loads_like_beir(tmp_path):
    """load_hf_dataset runs the real `datasets.load_dataset` on a local folder in the mteb/scifact layout."""
    hub = tmp_path / "hub"
    (hub / "qrels").mkdir(parents=True)
    (hub / "README.md").write_text(
        "---\nconfigs:\n"
        "- config_name: default\n  data_files:\n  - split: train\n    path: qrels/train.jsonl\n"
        "  - split: test\n    path: qrels/test.jsonl\n"
        "- config_name: corpus\n  data_files:\n  - split: corpus\n    path: corpus.jsonl\n"
        "- config_name: queries\n  data_files:\n  - split: queries\n    path: queries.jsonl\n---\n"
    )
    (hub / "corpus.jsonl").write_text("\n".join(CORPUS) + "\n")
    (hub / "queries.jsonl").write_text("\n".join(QUERIES) + "\n")
    for split, rows in QRELS.items():  # the Hub stores scores as floats
        records = [dict(zip(["query-id", "corpus-id", "score"], r.split("\t"))) for r in rows[1:]]
        (hub / "qrels" / f"{split}.jsonl").write_text(
            "".join(json.dumps({**r, "score": float(r["score"])}) + "\n" for r in records)
        )
    from_hub = load_hf_dataset(str(hub))
    assert from_hub.name == str(hub)
    assert from_hub.fingerprint() == load_beir(write_beir(tmp_path / "beir")).fingerprint()


def test_scifact_counts_and_text(scifact):
    assert scifact.name == "scifact"
    assert len(scifact.corpus_ids) == 5183
    assert {s: len(q) for s, q in scifact.qrels.items()} == {"train": 809, "test": 300}
    assert {s: sum(map(len, q.values())) for s, q in scifact.qrels.items()} == {"train": 919, "test": 339}
    assert len(scifact.query_ids) == 1109
    assert scifact.notes == ()
    first = json.loads((SHARED_SCIFACT / "corpus.jsonl").open().readline())
    assert scifact.corpus_ids[0] == first["_id"] == "4983"
    assert scifact.corpus_texts[0] == f"{first['title']} {first['text']}"


def test_the_shared_scifact_is_the_official_release():
    """The sha256 of each file equals the one the data README records for BEIR's release."""
    readme = (SHARED_DATA / "README.md").read_text()
    listed = {name: digest for digest, name in re.findall(r"^([0-9a-f]{64})  scifact/(\S+)$", readme, re.M)}
    assert set(listed) == {"corpus.jsonl", "queries.jsonl", "qrels/train.tsv", "qrels/test.tsv"}
    for name, digest in listed.items():
        assert hashlib.sha256((SHARED_SCIFACT / name).read_bytes()).hexdigest() == digest, name


def test_nothing_in_the_repository_is_a_dataset():
    """Data reaches the project only through ../shared/data; none of it is committed."""
    root = Path(__file__).resolve().parents[1]
    files = subprocess.run(["git", "ls-files"], cwd=root, capture_output=True, text=True, check=True).stdout.split()
    data = [f for f in files if f.endswith((".jsonl", ".tsv", ".parquet", ".xz", ".npy", ".arrow"))]
    assert data == []


def test_load_retrieval_data_dispatch(tmp_path):
    assert load_retrieval_data(write_beir(tmp_path / "local")).name == "local"
    assert load_retrieval_data(str(tmp_path / "local")).corpus_ids[0] == "d1"
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        load_retrieval_data(str(tmp_path / "missing"))


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_a_beir_folder_holding_only_its_corpus_is_corpus_only_data(tmp_path, suffix):
    folder = write_beir(tmp_path / "docs", suffix=suffix)
    shutil.rmtree(folder / "qrels")
    (folder / f"queries.jsonl{suffix}").unlink()
    data = load_retrieval_data(folder)
    assert not data.has_queries and data.name == "docs"
    assert data.corpus_ids == ["d1", "d2", "d3", "d4", "d5"]               # its own ids, BEIR's title + text
    assert data.corpus_texts[0] == "Alpha first doc"
    assert data.fingerprint() == load_retrieval_data(folder / f"corpus.jsonl{suffix}").fingerprint()   # = the file


def test_a_beir_folder_with_labels_must_still_be_whole(tmp_path):
    broken = write_beir(tmp_path / "bad_qrels", qrels={**QRELS, "train": replaced(QRELS["train"], 2, "q1\td1")})
    with pytest.raises(DatasetFormatError, match=r"train\.tsv, line 2: expected 3 tab-separated columns"):
        load_retrieval_data(broken)
    no_queries = write_beir(tmp_path / "no_queries")
    (no_queries / "queries.jsonl").unlink()
    with pytest.raises(DatasetFormatError, match=r"queries\.jsonl: missing"):
        load_retrieval_data(no_queries)
    no_qrels = write_beir(tmp_path / "no_qrels", qrels={})
    with pytest.raises(DatasetFormatError, match="no qrels files"):
        load_retrieval_data(no_qrels)


def test_subset_keeps_judged_docs_and_is_deterministic(scifact, scifact_small):
    small = scifact_small
    assert {s: len(q) for s, q in small.qrels.items()} == {"train": 120, "test": 60}
    judged = {d for split in small.qrels.values() for docs in split.values() for d in docs}
    assert judged <= set(small.corpus_ids)
    assert len(small.corpus_ids) == len(judged) + 600
    for split, queries in small.qrels.items():
        for q, docs in queries.items():
            assert scifact.qrels[split][q] == docs  # every judged doc of a kept query, unchanged
    full_text = dict(zip(scifact.corpus_ids, scifact.corpus_texts))
    assert all(full_text[d] == t for d, t in zip(small.corpus_ids, small.corpus_texts))
    order = {d: i for i, d in enumerate(scifact.corpus_ids)}
    assert [order[d] for d in small.corpus_ids] == sorted(order[d] for d in small.corpus_ids)
    assert set(small.query_ids) == set(small.qrels["train"]) | set(small.qrels["test"])
    assert small == scifact.subset({"train": 120, "test": 60}, 600, seed=0)
    other = scifact.subset({"train": 120, "test": 60}, 600, seed=1)
    assert set(other.qrels["train"]) != set(small.qrels["train"])
    assert small.notes[-1].startswith("subset of 'scifact' (seed 0): 120 train queries, 60 test queries")
    every_split = scifact.subset(5, 3)
    assert {s: len(q) for s, q in every_split.qrels.items()} == {"train": 5, "test": 5}
    with pytest.raises(ValueError, match="non-negative"):
        scifact.subset(-1, 0)


def test_held_out_split_is_deterministic_and_disjoint(scifact):
    train = scifact.split_query_ids("train")
    fit, held = held_out_split(train, fraction=0.1, seed=0)
    assert len(held) == 81 and len(fit) == 809 - 81
    assert not set(fit) & set(held) and set(fit) | set(held) == set(train)
    assert fit == [q for q in train if q in set(fit)]  # input order kept
    shuffled = random.Random(0).sample(train, len(train))
    assert set(held_out_split(shuffled, 0.1, seed=0)[1]) == set(held)
    assert set(held_out_split(train, 0.1, seed=1)[1]) != set(held)
    assert held_out_split(["a", "b", "c"], 0.01)[1] != []  # at least one held out
    assert held_out_split(["a", "b"], 0.9)[0] != []  # never all
    assert held_out_split(["a", "b"], 0.0) == (["a", "b"], [])
    with pytest.raises(ValueError, match="fraction"):
        held_out_split(train, 1.0)
    with pytest.raises(ValueError, match="duplicates"):
        held_out_split(["a", "a"])
