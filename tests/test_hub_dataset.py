"""The default dataset, the Hub id ``mteb/scifact``, loaded with the real ``datasets`` client from a fake Hub.

A real SciFact slice (20 train + 10 test queries, the documents they judge and 30 distractors, from the shared BEIR
copy) is written in MTEB's Hub layout (README ``configs:`` default / corpus / queries; ``corpus.jsonl``,
``queries.jsonl``, ``qrels/{train,test}.jsonl``, as in the real ``mteb/scifact``) and served by ``FakeHub`` as the
dataset repo ``mteb/scifact``. Fresh processes (``HF_ENDPOINT`` has to be set before ``huggingface_hub`` is imported)
load it with ``load_retrieval_data("mteb/scifact")`` online, then offline from the same temporary ``HF_HOME``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from data_paths import SHARED_SCIFACT
from fake_hub import FakeHub
from smec_hf.data import DEFAULT_DATASET, DatasetFormatError, RetrievalData, load_beir

REPO_ID = "mteb/scifact"
DEFAULT = "<default>"  # the online process's key for load_retrieval_data() with no argument
BROKEN_ID = "smec-tests/scifact-broken"
MISSING_ID = "smec-tests/no-such-dataset"
N_QUERIES = {"train": 20, "test": 10}
N_EXTRA_DOCS = 30
N_UNJUDGED_QUERIES = 5  # the real queries.jsonl holds every query, judged or not; the loader must drop these

# The real mteb/scifact card's YAML (https://huggingface.co/datasets/mteb/scifact/blob/main/README.md), trimmed.
# qrels scores are declared float64 there, so the loader sees 1.0 where the BEIR files say 1; `datasets` checks
# each split's num_examples against the rows it reads (num_bytes, here the file size, is not checked).
README_TEMPLATE = """---
language:
- en
task_categories:
- text-retrieval
task_ids:
- document-retrieval
dataset_info:
- config_name: default
  features:
  - name: query-id
    dtype: string
  - name: corpus-id
    dtype: string
  - name: score
    dtype: float64
  splits:
  - name: train
    num_bytes: {bytes[qrels/train.jsonl]}
    num_examples: {rows[qrels/train.jsonl]}
  - name: test
    num_bytes: {bytes[qrels/test.jsonl]}
    num_examples: {rows[qrels/test.jsonl]}
- config_name: corpus
  features:
  - name: _id
    dtype: string
  - name: title
    dtype: string
  - name: text
    dtype: string
  splits:
  - name: corpus
    num_bytes: {bytes[corpus.jsonl]}
    num_examples: {rows[corpus.jsonl]}
- config_name: queries
  features:
  - name: _id
    dtype: string
  - name: text
    dtype: string
  splits:
  - name: queries
    num_bytes: {bytes[queries.jsonl]}
    num_examples: {rows[queries.jsonl]}
configs:
- config_name: default
  data_files:
  - split: train
    path: qrels/train.jsonl
  - split: test
    path: qrels/test.jsonl
- config_name: corpus
  data_files:
  - split: corpus
    path: corpus.jsonl
- config_name: queries
  data_files:
  - split: queries
    path: queries.jsonl
tags:
- mteb
- text
---
# SciFact (test slice)

A small real slice of SciFact in the MTEB Hub layout, for smec_hf's tests.
"""

LOAD_SCRIPT = """
import json, sys
from smec_hf.data import load_retrieval_data
results = {}
for source in json.loads(sys.argv[1]):
    key = "%s" if source is None else source
    try:
        data = load_retrieval_data(source)
    except Exception as e:  # reported per source, so one process covers the good, the broken and the missing repo
        results[key] = {"error": type(e).__name__, "message": str(e)}
        continue
    results[key] = {"name": data.name, "corpus_ids": data.corpus_ids, "corpus_texts": data.corpus_texts,
                    "query_ids": data.query_ids, "query_texts": data.query_texts, "qrels": data.qrels,
                    "notes": list(data.notes), "fingerprint": data.fingerprint()}
print(json.dumps(results))
""" % DEFAULT


def jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def read_jsonl(path: Path) -> dict[str, dict]:
    with path.open(encoding="utf-8") as f:
        return {rec["_id"]: rec for rec in map(json.loads, filter(str.strip, f))}


def with_card(files: dict[str, str]) -> dict[str, str]:
    """The data files plus a README whose dataset_info matches them."""
    data = {path: text for path, text in files.items() if path != "README.md"}
    rows = {path: len(text.splitlines()) for path, text in data.items()}
    size = {path: len(text.encode()) for path, text in data.items()}
    return {"README.md": README_TEMPLATE.format(rows=rows, bytes=size), **data}


@pytest.fixture(scope="module")
def scifact_slice() -> RetrievalData:
    if not SHARED_SCIFACT.is_dir():
        pytest.fail(f"SciFact not found at {SHARED_SCIFACT}: put the shared data beside the repository "
                    "(../shared/data) or set SMEC_SHARED_DATA")
    return load_beir(SHARED_SCIFACT).subset(N_QUERIES, n_extra_docs=N_EXTRA_DOCS, seed=0)


@pytest.fixture(scope="module")
def repo_files(scifact_slice: RetrievalData) -> dict[str, str]:
    """The slice in the mteb/scifact layout, from the raw BEIR records (title and text kept apart, as on the Hub)."""
    corpus, queries = read_jsonl(SHARED_SCIFACT / "corpus.jsonl"), read_jsonl(SHARED_SCIFACT / "queries.jsonl")
    unjudged = [q for q in queries if q not in set(scifact_slice.query_ids)][:N_UNJUDGED_QUERIES]
    files = {
        "corpus.jsonl": jsonl([{"_id": d, "title": corpus[d]["title"], "text": corpus[d]["text"]}
                               for d in scifact_slice.corpus_ids]),
        "queries.jsonl": jsonl([{"_id": q, "text": queries[q]["text"]} for q in [*scifact_slice.query_ids, *unjudged]]),
    }
    for split, judged in scifact_slice.qrels.items():
        files[f"qrels/{split}.jsonl"] = jsonl([{"query-id": q, "corpus-id": d, "score": s}
                                               for q, docs in judged.items() for d, s in docs.items()])
    return with_card(files)


def hub_env(hub: FakeHub, hf_home: Path, offline: bool) -> dict[str, str]:
    """A clean HF environment: the fake Hub, a private HF_HOME, and the conftest's offline flags overridden."""
    import smec_hf

    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    flag = "1" if offline else "0"
    env.update(HF_ENDPOINT=hub.url, HF_HOME=str(hf_home), HF_HUB_OFFLINE=flag, HF_DATASETS_OFFLINE=flag,
               HF_HUB_DISABLE_TELEMETRY="1", HF_DATASETS_DISABLE_PROGRESS_BARS="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=str(Path(smec_hf.__file__).resolve().parent.parent))  # the smec_hf this process imported
    return env


def load_in_fresh_process(sources: list[str | None], env: dict[str, str], cwd: Path) -> tuple[dict, str]:
    """{source: loaded fields, or {"error", "message"}} from a new interpreter, and its stderr."""
    result = subprocess.run([sys.executable, "-c", LOAD_SCRIPT, json.dumps(sources)], env=env, cwd=cwd,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1]), result.stderr


def assert_equals_slice(data: dict, expected: RetrievalData, raw_corpus: dict[str, dict]) -> None:
    assert "error" not in data, data
    assert data["name"] == REPO_ID
    assert data["corpus_ids"] == expected.corpus_ids
    # the document rule, from the raw records: title + " " + text, stripped
    assert data["corpus_texts"] == [f"{raw_corpus[d]['title']} {raw_corpus[d]['text']}".strip()
                                    for d in expected.corpus_ids]
    assert data["corpus_texts"] == expected.corpus_texts
    assert data["query_ids"] == expected.query_ids                   # the unjudged queries are dropped
    assert data["query_texts"] == expected.query_texts
    assert list(data["qrels"]) == ["train", "test"]
    assert data["qrels"] == expected.qrels                           # float64 scores on the Hub, ints here
    assert all(type(s) is int for judged in data["qrels"].values() for docs in judged.values() for s in docs.values())
    assert not data["notes"]                                         # no train/test leak, nothing moved
    assert data["fingerprint"] == expected.fingerprint()             # so it shares the BEIR copy's embedding cache


@dataclass
class Served:
    hub: FakeHub
    sha: str                    # the commit mteb/scifact's main resolved to
    hf_home: Path
    online: dict                # what the online process loaded, by source
    online_requests: list[str]  # what it asked the fake Hub


@pytest.fixture(scope="module")
def served(repo_files: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One fake Hub for the module; one online process loads mteb/scifact (by id and as the default), the broken
    and the missing repo."""
    tmp = tmp_path_factory.mktemp("hub_dataset")
    query_id = json.loads(repo_files["qrels/test.jsonl"].splitlines()[0])["query-id"]
    extra = jsonl([{"query-id": query_id, "corpus-id": "no-such-doc", "score": 1}])
    broken = with_card({**repo_files, "qrels/test.jsonl": repo_files["qrels/test.jsonl"] + extra})
    with FakeHub() as hub:
        sha = hub.add_dataset(REPO_ID, repo_files)
        hub.add_dataset(BROKEN_ID, broken)
        online, _ = load_in_fresh_process([REPO_ID, None, BROKEN_ID, MISSING_ID],
                                          hub_env(hub, tmp / "hf_home", offline=False), tmp)
        yield Served(hub, sha, tmp / "hf_home", online, list(hub.requests))


def test_slice_is_real_and_small(scifact_slice: RetrievalData, repo_files: dict[str, str]) -> None:
    assert {split: len(judged) for split, judged in scifact_slice.qrels.items()} == N_QUERIES
    judged_docs = {d for judged in scifact_slice.qrels.values() for docs in judged.values() for d in docs}
    assert len(scifact_slice.corpus_ids) == len(judged_docs) + N_EXTRA_DOCS
    assert set(repo_files) == {"README.md", "corpus.jsonl", "queries.jsonl", "qrels/train.jsonl", "qrels/test.jsonl"}
    assert len(repo_files["queries.jsonl"].splitlines()) == len(scifact_slice.query_ids) + N_UNJUDGED_QUERIES
    assert f"num_examples: {len(scifact_slice.corpus_ids)}\n" in repo_files["README.md"]


def test_load_mteb_scifact_from_the_hub(served: Served, scifact_slice: RetrievalData) -> None:
    assert not served.hub.unhandled, served.hub.unhandled
    assert_equals_slice(served.online[REPO_ID], scifact_slice, read_jsonl(SHARED_SCIFACT / "corpus.jsonl"))
    fetched = {r.split()[1] for r in served.online_requests if r.startswith("GET ")}
    assert f"/datasets/{REPO_ID}/resolve/main/README.md" in fetched, served.online_requests
    for path in ["corpus.jsonl", "queries.jsonl", "qrels/train.jsonl", "qrels/test.jsonl"]:
        assert f"/datasets/{REPO_ID}/resolve/{served.sha}/{path}" in fetched, (path, served.online_requests)
    assert (served.hf_home / "datasets").is_dir() and (served.hf_home / "hub").is_dir()  # the caches went to HF_HOME


def test_the_default_dataset_is_mteb_scifact(served: Served, scifact_slice: RetrievalData) -> None:
    assert DEFAULT_DATASET == REPO_ID
    assert_equals_slice(served.online[DEFAULT], scifact_slice, read_jsonl(SHARED_SCIFACT / "corpus.jsonl"))


def test_reload_offline_from_the_cache(served: Served, scifact_slice: RetrievalData, tmp_path: Path) -> None:
    n_requests = len(served.hub.requests)
    offline, stderr = load_in_fresh_process([REPO_ID], hub_env(served.hub, served.hf_home, offline=True), tmp_path)
    assert_equals_slice(offline[REPO_ID], scifact_slice, read_jsonl(SHARED_SCIFACT / "corpus.jsonl"))
    assert served.hub.requests[n_requests:] == []  # the fake Hub is still up: offline really means the cache alone
    assert "offline mode is enabled" in stderr, stderr[-2000:]  # datasets' own word that it used the cache


def test_a_broken_hub_dataset_is_reported_with_its_config(served: Served) -> None:
    """The same layout with one qrels row naming a document the corpus lacks: the loader names config and split."""
    result = served.online[BROKEN_ID]
    assert result.get("error") == DatasetFormatError.__name__, result
    assert "config 'default', split 'test'" in result["message"], result
    assert "'no-such-doc' is not in config 'corpus'" in result["message"], result


def test_a_missing_hub_dataset_fails_cleanly(served: Served) -> None:
    assert served.online[MISSING_ID].get("error") == "FileNotFoundError", served.online[MISSING_ID]
    assert "DatasetNotFoundError" in served.online[MISSING_ID]["message"]          # the cause, and what to do:
    assert f"--data {MISSING_ID}" in served.online[MISSING_ID]["message"] and "local BEIR folder" in \
        served.online[MISSING_ID]["message"]
    assert any(r.startswith(f"GET /api/datasets/{MISSING_ID}") or f"/datasets/{MISSING_ID}/" in r
               for r in served.online_requests), served.online_requests  # it was asked, and said RepoNotFound


def test_fake_hub_dataset_endpoints(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Push a dataset folder with HfApi, then list, query and range-read it as HfFileSystem and datasets may."""
    import huggingface_hub.constants
    from huggingface_hub import HfApi, HfFileSystem

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    folder = tmp_path / "ds"
    (folder / "qrels").mkdir(parents=True)
    (folder / "README.md").write_text("---\nconfigs: []\n---\n")
    (folder / "corpus.jsonl").write_text('{"_id": "d1", "title": "", "text": "0123456789"}\n')
    (folder / "qrels" / "test.jsonl").write_text('{"query-id": "q1", "corpus-id": "d1", "score": 1}\n')
    with FakeHub() as hub:
        api = HfApi(endpoint=hub.url, token="dummy")
        url = api.create_repo("org/ds", repo_type="dataset")
        assert url == f"{hub.url}/datasets/org/ds"
        api.upload_folder(repo_id="org/ds", repo_type="dataset", folder_path=folder)
        assert "org/ds" in hub.datasets and "org/ds" not in hub.repos  # kinds do not mix
        assert set(hub.files("org/ds", repo_type="dataset")) == {".gitattributes", "README.md", "corpus.jsonl",
                                                                  "qrels/test.jsonl"}
        info = api.dataset_info("org/ds")
        assert info.sha == hub.datasets["org/ds"].refs["main"]
        assert sorted(s.rfilename for s in info.siblings) == sorted(hub.files("org/ds", repo_type="dataset"))

        top = {e.path: type(e).__name__ for e in api.list_repo_tree("org/ds", repo_type="dataset")}
        assert top == {".gitattributes": "RepoFile", "README.md": "RepoFile", "corpus.jsonl": "RepoFile",
                       "qrels": "RepoFolder"}
        every = [e.path for e in api.list_repo_tree("org/ds", repo_type="dataset", recursive=True, expand=True)]
        assert sorted(every) == [".gitattributes", "README.md", "corpus.jsonl", "qrels", "qrels/test.jsonl"]
        assert [e.path for e in api.list_repo_tree("org/ds", "qrels", repo_type="dataset")] == ["qrels/test.jsonl"]
        infos = api.get_paths_info("org/ds", ["qrels", "corpus.jsonl", "absent.txt"], repo_type="dataset")
        assert {e.path: type(e).__name__ for e in infos} == {"qrels": "RepoFolder", "corpus.jsonl": "RepoFile"}

        fs = HfFileSystem(endpoint=hub.url, token="dummy")
        assert fs.glob("datasets/org/ds/**/*.jsonl") == ["datasets/org/ds/corpus.jsonl",
                                                         "datasets/org/ds/qrels/test.jsonl"]
        n_requests = len(hub.requests)
        with fs.open("datasets/org/ds/corpus.jsonl", "rb", block_size=4) as f:  # small blocks: ranged reads
            f.seek(39)
            assert f.read(4) == b"3456"
        assert any(r.startswith("GET /datasets/org/ds/resolve/") for r in hub.requests[n_requests:])
        request = urllib.request.Request(f"{hub.url}/datasets/org/ds/resolve/main/corpus.jsonl",
                                         headers={"Range": "bytes=39-42"})
        with urllib.request.urlopen(request) as response:
            assert (response.status, response.headers["Content-Range"], response.read()) == (206, "bytes 39-42/49",
                                                                                              b"3456")
        assert not hub.unhandled, hub.unhandled
