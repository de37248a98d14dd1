"""scrub_text: the one rule that keeps the exporting machine's paths out of what is published."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from smec_hf.hf.scrub import scrub_folder, scrub_text


@pytest.mark.parametrize("text, published", [
    ("229 documents added from /abs/path/corpus.txt.", "229 documents added from <local>/corpus.txt."),
    ("`/tmp/pytest-1/model`", "`<local>/model`"),
    ("cache ~/.cache/smec_hf/embeddings", "cache <local>/embeddings"),
    ("from ../data/sf and ./x", "from <local>/sf and <local>/x"),
    ("C:\\Users\\bob\\pairs.jsonl", "<local>/pairs.jsonl"),
    # what is not a local path stays
    ("https://huggingface.co/org/model and http://localhost:8000/v1/embeddings", None),
    ("| 0.6008 / 0.6400 (384) | and/or 1/2", None),
    ("sentence_transformers.models.Dense, org/model, <local>/x", None),
])
def test_paths_become_their_base_names(text: str, published: str | None) -> None:
    assert scrub_text(text) == (published or text)


def test_the_runs_own_paths_and_the_home_folder_are_replaced_however_written(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "models" / "tiny").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert scrub_text("base models/tiny, models/tiny-2", ["models/tiny"]) == "base <local>/tiny, models/tiny-2"
    assert scrub_text("encoder sentence-transformers/all-MiniLM-L6-v2",
                      ["sentence-transformers/all-MiniLM-L6-v2"]).endswith("sentence-transformers/all-MiniLM-L6-v2")
    assert str(Path.home()) not in scrub_text(f"trained by {Path.home()}")


def test_a_folder_is_scrubbed_except_tokenizer_vocabularies(tmp_path: Path) -> None:
    """JSON is scrubbed through its values (the file escapes the é), text as a whole, vocabularies not at all."""
    path = "/home/alice/data/sf"
    (tmp_path / "smec_run.json").write_text(json.dumps({"notes": [f"12 documents added from {path}/é.txt"]}))
    (tmp_path / "README.md").write_text(f"trained on `{path}`")
    (tmp_path / "vocab.txt").write_text("/usr/lib\n")                       # model data: never rewritten
    (tmp_path / "model.safetensors").write_bytes(b"/home/alice/x/y")        # binary: never read as text
    assert scrub_folder(tmp_path) == ["README.md", "smec_run.json"]
    assert json.loads((tmp_path / "smec_run.json").read_text()) == {"notes": ["12 documents added from <local>/é.txt"]}
    assert (tmp_path / "README.md").read_text() == "trained on `<local>/sf`"
    assert (tmp_path / "vocab.txt").read_text() == "/usr/lib\n" and scrub_folder(tmp_path) == []
