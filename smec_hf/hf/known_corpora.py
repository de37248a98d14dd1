"""Which known datasets a training corpus holds, by content: a licence follows the documents, not a folder's name.

A known corpus is stored as a set of short hashes, one per document: blake2b (48 bits) of the first
``WINDOW`` normalised words of its body (NFKC, casefolded, ``\\w+`` words joined by one space). A run's document
holds a known one when any window of its first ``MAX_START + WINDOW`` words hashes into that set, so a title
before the body (BEIR's ``title + " " + text``), a prompt, other case, punctuation or whitespace do not hide it;
a document cut before the end of that first window, or a passage from the middle of one, is not recognised.

The hash files are built from the datasets' own corpus files by :func:`build_hash_file`
(``python -m smec_hf.hf.known_corpora scifact /path/to/scifact/corpus.jsonl``); only the hashes ship, not the data.
"""
from __future__ import annotations

import hashlib
import json
import re
import sys
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Iterable, Iterator

FORMAT = "smec_hf.corpus-windows/1"   # recorded with every identification: hashes of another rule never compare
WINDOW = 16          # words per hashed window: long enough that a shared window means a shared document
MAX_START = 64       # window starts tried per run document (SciFact's longest title has 42 words)
DIGEST_BYTES = 6
HASH_PACKAGE = "smec_hf.hf"
HASH_FOLDER = "corpus_hashes"
# a corpus "holds" a known dataset from this many of its documents, or this share of a small corpus
MIN_DOCUMENTS = 20
MIN_SHARE = 0.05
_WORD = re.compile(r"\w+")


@dataclass(frozen=True)
class KnownCorpus:
    """A dataset whose documents bind a model trained on them."""

    key: str                # the hash file's stem and the key in a run's ``training_corpus``
    title: str
    hub_id: str             # the Hub copy the card links to
    license: str            # a Hub licence id
    restriction: str        # what the licence allows, in words, for the card
    corpus_fingerprint: str  # ``RetrievalData.text_fingerprint("corpus")`` of the whole corpus as BEIR loads it


KNOWN_CORPORA = {
    "scifact": KnownCorpus(
        key="scifact", title="SciFact", hub_id="mteb/scifact", license="cc-by-nc-2.0",
        restriction="non-commercial use only",
        corpus_fingerprint="a75047db78f817b426ab0b9b8a67e9521c0c361fe118a898059b3b5f0ef82bf8"),
}


def words(text: str) -> list[str]:
    return _WORD.findall(unicodedata.normalize("NFKC", text).casefold())


def window_hash(window: list[str]) -> str:
    return hashlib.blake2b(" ".join(window).encode("utf-8"), digest_size=DIGEST_BYTES).hexdigest()


def document_hash(body: str) -> str | None:
    """The stored hash of one known document: its body's first window (None for a body shorter than a window)."""
    tokens = words(body)
    return window_hash(tokens[:WINDOW]) if len(tokens) >= WINDOW else None


def candidate_hashes(text: str) -> Iterator[str]:
    """Hashes of the windows of a run's document that may be the start of a known body."""
    tokens = words(text)
    for start in range(min(MAX_START, len(tokens) - WINDOW) + 1):
        yield window_hash(tokens[start:start + WINDOW])


@lru_cache(maxsize=None)
def known_hashes(key: str) -> frozenset[str]:
    file = resources.files(HASH_PACKAGE) / HASH_FOLDER / f"{key}.txt"
    lines = file.read_text(encoding="utf-8").splitlines()
    return frozenset(line for line in lines if line and not line.startswith("#"))


def identify_corpus(texts: Iterable[str]) -> dict:
    """What ``smec train`` records as ``training_corpus``: the corpus size and, per known dataset, how many of its
    documents it holds (only datasets with at least one)."""
    texts = list(texts)
    counts = {}
    for key in KNOWN_CORPORA:
        hashes = known_hashes(key)
        found = sum(any(h in hashes for h in candidate_hashes(text)) for text in texts)
        if found:
            counts[key] = found
    return {"format": FORMAT, "documents": len(texts), "known": counts}


def held_corpora(identity: dict) -> list[tuple[KnownCorpus, int]]:
    """The known datasets a recorded ``training_corpus`` holds enough of to bind the model, with their counts."""
    total = max(int(identity.get("documents", 0)), 1)
    return [(KNOWN_CORPORA[key], int(n)) for key, n in identity.get("known", {}).items()
            if key in KNOWN_CORPORA and (n >= MIN_DOCUMENTS or n / total >= MIN_SHARE)]


def corpus_by_fingerprint(fingerprint: str | None) -> KnownCorpus | None:
    """The known dataset whose whole corpus has this text fingerprint (what an embedding cache records)."""
    return next((c for c in KNOWN_CORPORA.values() if fingerprint and c.corpus_fingerprint == fingerprint), None)


def build_hash_file(corpus_jsonl: str | Path, out: str | Path) -> int:
    """Write the hash file of a BEIR ``corpus.jsonl`` (each record's ``text``, the body); returns the hash count."""
    hashes = set()
    with open(corpus_jsonl, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                digest = document_hash(json.loads(line).get("text") or "")
                if digest:
                    hashes.add(digest)
    header = (f"# {FORMAT}: blake2b-{8 * DIGEST_BYTES} of the first {WINDOW} normalised words of each document body "
              f"of {Path(corpus_jsonl).name}; built by smec_hf.hf.known_corpora.build_hash_file\n")
    Path(out).write_text(header + "".join(f"{h}\n" for h in sorted(hashes)), encoding="utf-8")
    return len(hashes)


if __name__ == "__main__":   # python -m smec_hf.hf.known_corpora KEY CORPUS_JSONL
    key, corpus = sys.argv[1:3]
    target = Path(__file__).with_name(HASH_FOLDER) / f"{key}.txt"
    print(f"{build_hash_file(corpus, target)} hashes written to {target}")
