"""Retrieval datasets in the BEIR layout (corpus.jsonl, queries.jsonl, qrels/<split>.tsv).

Everything downstream (embedding cache, training, evaluation) works on one in-memory
:class:`RetrievalData`, so format problems are caught here, once, with the file and line to fix.
"""
from __future__ import annotations

import bz2
import gzip
import hashlib
import json
import lzma
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

COMPRESSED_SUFFIXES = (".xz", ".gz", ".bz2")
OPENERS = {".xz": lzma.open, ".gz": gzip.open, ".bz2": bz2.open}
QRELS_HEADER = ["query-id", "corpus-id", "score"]
_SPLIT_ORDER = {"train": 0, "dev": 1, "test": 2}
# the default training data: BEIR SciFact as MTEB publishes it (CC BY-NC 2.0); offline, pass a local BEIR copy
DEFAULT_DATASET = "mteb/scifact"


class DatasetFormatError(ValueError):
    """Malformed retrieval data; the message starts with the file (and 1-based line) to fix."""

    def __init__(self, message: str, source: str | Path | None = None, line: int | None = None):
        where = f"{source}, line {line}: " if line is not None else f"{source}: " if source is not None else ""
        super().__init__(where + message)
        self.source = source
        self.line = line


class NotRetrievalLayout(DatasetFormatError):
    """A Hub dataset without MTEB's corpus/queries configs (then read as a pairs table)."""


@dataclass(frozen=True)
class RetrievalData:
    """A retrieval dataset held in memory; list order is the row order of every embedding matrix."""

    name: str
    corpus_ids: list[str]
    corpus_texts: list[str]
    query_ids: list[str]
    query_texts: list[str]
    qrels: dict[str, dict[str, dict[str, int]]]
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if len(self.corpus_ids) != len(self.corpus_texts):
            raise ValueError(f"{len(self.corpus_ids)} corpus ids but {len(self.corpus_texts)} corpus texts")
        if len(self.query_ids) != len(self.query_texts):
            raise ValueError(f"{len(self.query_ids)} query ids but {len(self.query_texts)} query texts")

    def fingerprint(self) -> str:
        """sha256 of the content (not the name or notes), so equal data shares one embedding cache."""
        payload = [self.corpus_ids, self.corpus_texts, self.query_ids, self.query_texts, self.qrels]
        blob = json.dumps(["smec_hf.RetrievalData/1", payload], sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def text_fingerprint(self, kind: str = "all") -> str:
        """sha256 of the texts alone ("corpus", "queries" or "all"), in row order: what the embeddings depend
        on, so the embedding cache is shared by every dataset with the same texts whatever its ids or labels."""
        parts = {"corpus": [self.corpus_texts], "queries": [self.query_texts],
                 "all": [self.corpus_texts, self.query_texts]}[kind]
        blob = json.dumps(["smec_hf.texts/1", parts], ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    @property
    def has_queries(self) -> bool:
        """False for a corpus-only dataset (no queries, no labels): methods then train without supervision."""
        return bool(self.qrels)

    def split_query_ids(self, split: str) -> list[str]:
        """Query ids judged in `split`, in queries-file order."""
        if split not in self.qrels:
            raise DatasetFormatError(
                f"dataset {self.name!r} has no {split!r} split; available splits: {', '.join(self.qrels) or 'none'}"
            )
        judged = self.qrels[split]
        return [q for q in self.query_ids if q in judged]

    def subset(
        self, n_queries_per_split: int | Mapping[str, int], n_extra_docs: int, seed: int = 0
    ) -> RetrievalData:
        """A small real slice for tests and benchmarks, chosen by hash of id so it never depends on file order.

        `n_queries_per_split` is one count for every split, or a {split: count} mapping (unnamed splits
        are dropped). Every document judged for a kept query is kept, plus `n_extra_docs` distractors.
        """
        counts = (
            dict(n_queries_per_split)
            if isinstance(n_queries_per_split, Mapping)
            else dict.fromkeys(self.qrels, n_queries_per_split)
        )
        if any(not isinstance(n, int) or n < 0 for n in [*counts.values(), n_extra_docs]):
            raise ValueError(f"counts must be non-negative integers, got {counts} and n_extra_docs={n_extra_docs}")
        qrels: dict[str, dict[str, dict[str, int]]] = {}
        for split, n in counts.items():
            kept = set(sorted(self.split_query_ids(split), key=lambda q: _rank(seed, q))[:n])
            qrels[split] = {q: dict(docs) for q, docs in self.qrels[split].items() if q in kept}
        judged = {d for split_qrels in qrels.values() for docs in split_qrels.values() for d in docs}
        others = [d for d in self.corpus_ids if d not in judged]
        docs = judged | set(sorted(others, key=lambda d: _rank(seed, d))[:n_extra_docs])
        queries = {q for split_qrels in qrels.values() for q in split_qrels}
        corpus_rows = [i for i, d in enumerate(self.corpus_ids) if d in docs]
        query_rows = [i for i, q in enumerate(self.query_ids) if q in queries]
        note = (
            f"subset of {self.name!r} (seed {seed}): "
            + ", ".join(f"{len(qrels[s])} {s} queries" for s in qrels)
            + f", {len(judged)} judged + {len(docs) - len(judged)} extra documents"
        )
        return RetrievalData(
            name=f"{self.name}-subset",
            corpus_ids=[self.corpus_ids[i] for i in corpus_rows],
            corpus_texts=[self.corpus_texts[i] for i in corpus_rows],
            query_ids=[self.query_ids[i] for i in query_rows],
            query_texts=[self.query_texts[i] for i in query_rows],
            qrels=qrels,
            notes=(*self.notes, note),
        )


def held_out_split(
    query_ids: Sequence[str], fraction: float = 0.1, seed: int = 0
) -> tuple[list[str], list[str]]:
    """Split TRAIN queries into (fit, held_out) for early stopping.

    The `round(fraction * n)` ids with the smallest sha256(seed, id) are held out (at least one, and
    never all, when 0 < fraction and n >= 2), so the split is the same in every process and for any
    input order. Both lists keep the input order.
    """
    ids = list(query_ids)
    if len(set(ids)) != len(ids):
        raise ValueError("query_ids contains duplicates")
    if not 0 <= fraction < 1:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    n_held = round(fraction * len(ids))
    if fraction > 0 and len(ids) >= 2:
        n_held = min(max(n_held, 1), len(ids) - 1)
    held = set(sorted(ids, key=lambda q: _rank(seed, q))[:n_held])
    return [q for q in ids if q not in held], [q for q in ids if q in held]


def load_beir(path: str | Path, name: str | None = None) -> RetrievalData:
    """Load and validate a BEIR folder; corpus/queries/qrels files may be .xz/.gz/.bz2 compressed."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"dataset folder {folder} does not exist")
    corpus_file = find_file(folder, "corpus.jsonl")
    queries_file = find_file(folder, "queries.jsonl")
    corpus = parse_texts(jsonl_records(corpus_file), corpus_file, with_title=True)
    queries = parse_texts(jsonl_records(queries_file), queries_file, with_title=False)
    qrels = {
        split: _parse_qrels(_tsv_rows(file), file, queries, queries_file.name, corpus, corpus_file.name)
        for split, file in _qrels_files(folder).items()
    }
    return _assemble(name or folder.resolve().name, corpus, queries, qrels, str(folder))


def load_hf_dataset(repo_id: str, revision: str | None = None) -> RetrievalData:
    """Load a retrieval dataset in the MTEB Hub layout: configs "corpus", "queries" and "default" (qrels).

    The corpus and queries configs hold one split each; "default" holds one split per qrels split
    with columns query-id, corpus-id, score. Rows are validated exactly like the BEIR files.
    """
    from datasets import load_dataset as hub_load  # imported here: slow, and only needed for Hub datasets

    def load_dataset(repo: str, config: str, revision: str | None = None):
        try:
            return hub_load(repo, config, revision=revision)
        except ValueError as error:                   # datasets: "BuilderConfig 'corpus' not found"
            if config in str(error) and "not found" in str(error):
                raise NotRetrievalLayout(f"no {config!r} config: not in MTEB's retrieval layout", repo) from error
            raise
        except (ConnectionError, OSError) as error:   # offline, unknown repo, no network: say what to do
            raise FileNotFoundError(f"--data {repo}: cannot load this Hub dataset ({type(error).__name__}: {error}). "
                                    "Offline (HF_HUB_OFFLINE=1), pass a local BEIR folder instead") from error

    def single_split(config: str) -> Iterable[dict[str, Any]]:
        splits = load_dataset(repo_id, config, revision=revision)
        if len(splits) != 1:
            raise DatasetFormatError(f"config {config!r} should hold one split, found {list(splits)}", repo_id)
        rows = next(iter(splits.values()))
        return ({"_id": r["id"], **r} if "_id" not in r and "id" in r else r for r in rows)

    corpus_src, queries_src = f"{repo_id} (config 'corpus')", f"{repo_id} (config 'queries')"
    corpus = parse_texts(enumerate(single_split("corpus"), 1), corpus_src, with_title=True)
    queries = parse_texts(enumerate(single_split("queries"), 1), queries_src, with_title=False)
    qrels = {}
    for split, rows in load_dataset(repo_id, "default", revision=revision).items():
        missing = set(QRELS_HEADER) - set(rows.column_names)
        source = f"{repo_id} (config 'default', split {split!r})"
        if missing:
            raise DatasetFormatError(f"missing qrels columns {sorted(missing)}", source)
        table = ((i, [r["query-id"], r["corpus-id"], r["score"]]) for i, r in enumerate(rows, 1))
        qrels[split] = _parse_qrels(table, source, queries, "config 'queries'", corpus, "config 'corpus'")
    return _assemble(repo_id, corpus, queries, _ordered(qrels), repo_id)


def _rank(seed: int, item_id: str) -> bytes:
    """Sort key that is a pure function of (seed, id): process- and order-independent sampling."""
    return hashlib.sha256(f"{seed}\0{item_id}".encode()).digest()


def find_file(folder: Path, name: str) -> Path:
    found = [folder / (name + s) for s in ("", *COMPRESSED_SUFFIXES) if (folder / (name + s)).is_file()]
    if not found:
        raise DatasetFormatError(f"missing (also looked for {', '.join(COMPRESSED_SUFFIXES)} versions)", folder / name)
    if len(found) > 1:
        raise DatasetFormatError(f"ambiguous: found {', '.join(p.name for p in found)}; keep only one", folder / name)
    return found[0]


def _qrels_files(folder: Path) -> dict[str, Path]:
    qrels_dir = folder / "qrels"
    files: dict[str, Path] = {}
    for file in sorted(qrels_dir.iterdir()) if qrels_dir.is_dir() else []:
        base = file.name.removesuffix(file.suffix) if file.suffix in COMPRESSED_SUFFIXES else file.name
        if file.is_file() and base.endswith(".tsv"):
            split = base.removesuffix(".tsv")
            if split in files:
                raise DatasetFormatError(
                    f"ambiguous: {files[split].name} and {file.name} both hold split {split!r}", qrels_dir
                )
            files[split] = file
    if not files:
        raise DatasetFormatError("no qrels files (expected qrels/train.tsv, dev.tsv or test.tsv)", qrels_dir)
    return _ordered(files)


def _ordered(by_split: dict[str, Any]) -> dict[str, Any]:
    return dict(sorted(by_split.items(), key=lambda kv: (_SPLIT_ORDER.get(kv[0], len(_SPLIT_ORDER)), kv[0])))


def text_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Non-blank lines with 1-based numbers; decoding and decompression errors name the file and line."""
    line_no = 0
    try:
        with OPENERS.get(path.suffix, open)(path, "rb") as f:
            for line_no, raw in enumerate(f, 1):
                line = raw.decode("utf-8").rstrip("\r\n")
                if line.strip():
                    yield line_no, line
    except UnicodeDecodeError as e:
        raise DatasetFormatError(f"not valid UTF-8 ({e.reason})", path, line_no) from e
    except (OSError, EOFError, lzma.LZMAError) as e:
        raise DatasetFormatError(f"cannot read after line {line_no}: {e}", path) from e


def jsonl_records(path: Path) -> Iterator[tuple[int, Any]]:
    for line_no, line in text_lines(path):
        try:
            yield line_no, json.loads(line)
        except json.JSONDecodeError as e:
            raise DatasetFormatError(f"malformed JSON ({e.msg} at column {e.colno})", path, line_no) from e


def _tsv_rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    lines = text_lines(path)
    first = next(lines, None)
    if first is None or first[1].split("\t") != QRELS_HEADER:
        raise DatasetFormatError("expected the header 'query-id<TAB>corpus-id<TAB>score'", path, first and first[0])
    for line_no, line in lines:
        yield line_no, line.split("\t")


def parse_texts(records: Iterable[tuple[int, Any]], source: str | Path, *, with_title: bool) -> dict[str, str]:
    """id -> text in file order; documents get (title + " " + text).strip() as BEIR/MTEB do."""
    texts: dict[str, str] = {}
    first_seen: dict[str, int] = {}
    for line_no, rec in records:
        if not isinstance(rec, Mapping):
            raise DatasetFormatError(f"expected a JSON object, got {type(rec).__name__}", source, line_no)
        raw_id = rec.get("_id")
        if isinstance(raw_id, bool) or not isinstance(raw_id, (str, int)) or raw_id == "":
            raise DatasetFormatError("missing or invalid '_id' (must be a non-empty string)", source, line_no)
        doc_id = str(raw_id)
        if doc_id in first_seen:
            raise DatasetFormatError(f"duplicate id {doc_id!r} (first on line {first_seen[doc_id]})", source, line_no)
        fields = [rec.get("title"), rec.get("text")] if with_title else [rec.get("text")]
        if any(f is not None and not isinstance(f, str) for f in fields):
            raise DatasetFormatError(f"'title' and 'text' of {doc_id!r} must be strings", source, line_no)
        text = " ".join(f or "" for f in fields).strip() if with_title else fields[0] or ""
        if not text.strip():
            raise DatasetFormatError(f"empty text for id {doc_id!r}", source, line_no)
        first_seen[doc_id] = line_no
        texts[doc_id] = text
    return texts


def _parse_qrels(
    rows: Iterable[tuple[int, list[Any]]],
    source: str | Path,
    queries: Mapping[str, str],
    queries_name: str,
    corpus: Mapping[str, str],
    corpus_name: str,
) -> dict[str, dict[str, int]]:
    qrels: dict[str, dict[str, int]] = {}
    for line_no, row in rows:
        if len(row) != 3:
            raise DatasetFormatError(
                f"expected 3 tab-separated columns (query-id, corpus-id, score), got {len(row)}", source, line_no
            )
        qid, did, score = str(row[0]), str(row[1]), _parse_score(row[2], source, line_no)
        if qid not in queries:
            raise DatasetFormatError(f"query id {qid!r} is not in {queries_name}", source, line_no)
        if did not in corpus:
            raise DatasetFormatError(f"corpus id {did!r} is not in {corpus_name}", source, line_no)
        judged = qrels.setdefault(qid, {})
        if judged.get(did, score) != score:
            raise DatasetFormatError(f"conflicting scores for ({qid!r}, {did!r})", source, line_no)
        judged[did] = score
    if not qrels:
        raise DatasetFormatError("no judgments", source)
    return qrels


def _parse_score(value: Any, source: str | Path, line_no: int) -> int:
    """Graded relevance must be integral; "1" and 1.0 (the Hub stores floats) both mean 1."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not (math.isfinite(number) and number.is_integer()):
        raise DatasetFormatError(f"score {value!r} is not an integer", source, line_no)
    return int(number)


def _assemble(
    name: str,
    corpus: dict[str, str],
    queries: dict[str, str],
    qrels: dict[str, dict[str, dict[str, int]]],
    origin: str,
) -> RetrievalData:
    """Build the dataset, making sure a query is never both trained on and evaluated."""
    notes: list[str] = []
    if "train" in qrels:
        elsewhere = {q for split, judged in qrels.items() if split != "train" for q in judged}
        leaked = [q for q in qrels["train"] if q in elsewhere]
        if leaked:
            qrels["train"] = {q: d for q, d in qrels["train"].items() if q not in elsewhere}
            notes.append(f"{len(leaked)} train queries of {origin} also judged in another split: removed from train")
    elif "test" in qrels and len(qrels["test"]) >= 2:
        test = qrels.pop("test")
        train_ids, test_ids = held_out_split(list(test), fraction=0.5, seed=0)
        qrels = _ordered({**qrels, "train": {q: test[q] for q in train_ids}, "test": {q: test[q] for q in test_ids}})
        notes.append(
            f"no train split in {origin}: {len(train_ids)} of {len(test)} test queries moved to train "
            f"(chosen by sha256 of the query id, seed 0); {len(test_ids)} remain in test"
        )
    else:
        raise DatasetFormatError(
            f"needs a train split or a test split with at least 2 queries; found {', '.join(qrels)}", origin
        )
    if any(not judged for judged in qrels.values()):
        empty = ", ".join(split for split, judged in qrels.items() if not judged)
        raise DatasetFormatError(f"no queries left in split {empty} (all also judged in another split)", origin)
    judged_queries = {q for judged in qrels.values() for q in judged}
    query_ids = [q for q in queries if q in judged_queries]
    return RetrievalData(
        name=name,
        corpus_ids=list(corpus),
        corpus_texts=list(corpus.values()),
        query_ids=query_ids,
        query_texts=[queries[q] for q in query_ids],
        qrels=qrels,
        notes=tuple(notes),
    )
