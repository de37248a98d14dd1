"""Training data in Sentence-Transformers' own format: tables of ``(anchor, positive[, negative ...])`` rows, or a
bare corpus to search over.

ST's rule is positional: the first column is the anchor (here the query), the second its positive, any further
columns are negatives; column names do not matter, except that a ``label`` or ``score`` column means another
training format (pair classification or similarity regression), which is refused. Documents and queries are
de-duplicated by text and get ids that are hashes of the text, so the same texts always have the same ids (and
share one embedding cache). Everything becomes one :class:`~smec_hf.data.beir.RetrievalData`: a positive is a
qrel of score 1, a given negative a qrel of score 0 (judged not relevant), which the training examples rank
against the query together with the mined hard negatives.

Tables are read from ``.jsonl`` / ``.csv`` / ``.parquet`` files, ``datasets.save_to_disk`` folders, Hub dataset
ids or a ``datasets.Dataset``; a corpus also from a ``.txt`` file (one document a line) or a BEIR ``corpus.jsonl``.
Errors name the file, the row and the column.
"""
from __future__ import annotations

import csv
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .beir import DatasetFormatError, RetrievalData, jsonl_records, text_lines, OPENERS, parse_texts

LABEL_COLUMNS = ("label", "labels", "score", "scores")
FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet", ".txt")   # what --data reads as a file
MIN_CORPUS = 2


@dataclass
class Table:
    """Rows of one split as ``(row number, {column: value})`` (read once), with the column order ST's rule reads."""

    source: str
    columns: list[str]
    rows: Iterable[tuple[int, Mapping[str, Any]]]
    split: str = "train"


def text_id(prefix: str, text: str) -> str:
    """A stable id from the text alone (``q-``/``d-`` + 16 hex digits of its sha256)."""
    return f"{prefix}-{hashlib.sha256(text.encode('utf-8')).hexdigest()[:16]}"


def read_tables(source: Any, config: str | None = None, split: str | None = None) -> list[Table]:
    """The tables behind ``source``: a local file or ``save_to_disk`` folder, a ``datasets`` object or a Hub id.

    A ``DatasetDict`` (or a Hub dataset without ``split``) gives one table per split; ``split`` keeps one.
    """
    from datasets import Dataset, DatasetDict

    if isinstance(source, (Dataset, DatasetDict)):
        return _from_datasets(source, "the given dataset", split)
    path = Path(source).expanduser()
    if path.is_dir():
        from datasets import load_from_disk

        try:
            loaded = load_from_disk(str(path))
        except (FileNotFoundError, ValueError, OSError) as error:
            raise DatasetFormatError(f"not a BEIR folder (corpus.jsonl, queries.jsonl, qrels/) nor a "
                                     f"datasets.save_to_disk folder ({error})", path) from error
        return _from_datasets(loaded, str(path), split)
    if path.is_file():
        suffix = _suffix(path)
        readers = {".jsonl": _jsonl_table, ".json": _jsonl_table, ".csv": _csv_table, ".parquet": _parquet_table,
                   ".txt": _text_table}
        if suffix not in readers:
            raise DatasetFormatError(f"unknown file type {suffix!r}: --data takes a BEIR folder, a .jsonl, .csv, "
                                     f".parquet or .txt file, a datasets.save_to_disk folder or a Hub dataset id", path)
        return [readers[suffix](path)]
    return _from_hub(str(source), config, split)


def tables_to_data(tables: Sequence[Table], name: str) -> RetrievalData:
    """One :class:`RetrievalData` from pair/triplet tables (one per split) or a single corpus table."""
    if len(tables) == 1 and _is_corpus(tables[0]):
        data = _assemble(name, {}, _corpus_texts(tables[0]), {})
    else:
        queries: dict[str, str] = {}
        docs: dict[str, str] = {}
        qrels: dict[str, dict[str, dict[str, int]]] = {}
        for table in tables:
            _read_pairs(table, queries, docs, qrels.setdefault(table.split, {}))
        data = _assemble(name, queries, docs, qrels)
    _check_corpus_size(data, tables[0].source)
    return data


def add_documents(data: RetrievalData, corpus: Table) -> RetrievalData:
    """``data`` with the documents of ``corpus`` (``--corpus``) added as distractors (texts it has are skipped)."""
    known = set(data.corpus_texts)
    extra = {d: t for d, t in _corpus_texts(corpus).items() if t not in known}
    if set(extra) & set(data.corpus_ids):
        clash = sorted(set(extra) & set(data.corpus_ids))[0]
        raise DatasetFormatError(f"document id {clash!r} is already used by another text of the dataset", corpus.source)
    return RetrievalData(data.name, data.corpus_ids + list(extra), data.corpus_texts + list(extra.values()),
                         data.query_ids, data.query_texts, data.qrels,
                         (*data.notes, f"{len(extra)} documents added from {corpus.source}"))


def _check_corpus_size(data: RetrievalData, source: str) -> None:
    if len(data.corpus_ids) < MIN_CORPUS:
        raise DatasetFormatError(f"needs at least {MIN_CORPUS} distinct documents to search over, found "
                                 f"{len(data.corpus_ids)}", source)


def _is_corpus(table: Table) -> bool:
    return len(table.columns) == 1 or (table.columns[:1] == ["_id"] and "text" in table.columns)


def _read_pairs(table: Table, queries: dict[str, str], docs: dict[str, str], qrels: dict[str, dict[str, int]]) -> None:
    """Add one split's ``(anchor, positive, negatives...)`` rows (ST's positional rule) to the collections:
    positives as qrels of score 1, negatives of score 0 (a document that is a positive of the query stays one)."""
    labels = [c for c in table.columns if c.lower() in LABEL_COLUMNS]
    if labels:
        raise DatasetFormatError(f"column {labels[0]!r}: a table with a label or score column is a different "
                                 "training format (pair classification / similarity regression); SMEC trains on "
                                 "(anchor, positive[, negative ...]) rows", table.source)
    if len(table.columns) < 2:
        raise DatasetFormatError(f"split {table.split!r} has {len(table.columns)} column(s) {table.columns}: pairs "
                                 "need (anchor, positive[, negative ...]); a single column is read as a corpus only "
                                 "when it is the only table", table.source)
    n_rows = 0
    for row_no, row in table.rows:
        texts = [_cell(row, column, table, row_no) for column in table.columns]
        qid = text_id("q", texts[0])
        queries.setdefault(qid, texts[0])
        judged = qrels.setdefault(qid, {})
        for position, text in enumerate(texts[1:]):
            did = text_id("d", text)
            docs.setdefault(did, text)
            judged[did] = max(judged.get(did, 0), int(position == 0))
        n_rows += 1
    if n_rows == 0:
        raise DatasetFormatError(f"split {table.split!r} has no rows", table.source)


def _cell(row: Mapping[str, Any], column: str, table: Table, row_no: int) -> str:
    if column not in row:
        raise DatasetFormatError(f"row {row_no}: missing column {column!r}", table.source)
    value = row[column]
    if value is None:
        raise DatasetFormatError(f"row {row_no}, column {column!r}: no value", table.source)
    if not isinstance(value, str):
        raise DatasetFormatError(f"row {row_no}, column {column!r}: expected text, got {type(value).__name__}",
                                 table.source)
    if not value.strip():
        raise DatasetFormatError(f"row {row_no}, column {column!r}: empty text", table.source)
    return value


def _corpus_texts(table: Table) -> dict[str, str]:
    """Documents of a corpus table: a BEIR corpus (``_id``, ``title``, ``text``) keeps its ids, anything else
    its ``text`` column (or its only/first column) with text-hash ids; repeated texts are kept once."""
    if table.columns[:1] == ["_id"]:
        return parse_texts(table.rows, table.source, with_title=True)
    column = "text" if "text" in table.columns else table.columns[0]
    docs: dict[str, str] = {}
    for row_no, row in table.rows:
        text = _cell(row, column, table, row_no)
        docs.setdefault(text_id("d", text), text)
    return docs


def _assemble(name: str, queries: dict[str, str], docs: dict[str, str],
              qrels: dict[str, dict[str, dict[str, int]]]) -> RetrievalData:
    """Drop anchors of train that another split also has from train (never trained on and evaluated)."""
    notes = []
    if "train" in qrels:
        elsewhere = {q for split, judged in qrels.items() if split != "train" for q in judged}
        leaked = [q for q in qrels["train"] if q in elsewhere]
        for q in leaked:
            del qrels["train"][q]
        if leaked:
            notes.append(f"{len(leaked)} train anchors also appear in another split: removed from train")
    return RetrievalData(name=name, corpus_ids=list(docs), corpus_texts=list(docs.values()), query_ids=list(queries),
                         query_texts=list(queries.values()), qrels=qrels, notes=tuple(notes))


def _suffix(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in OPENERS:
        suffixes = suffixes[:-1]
    return suffixes[-1] if suffixes else ""


def _jsonl_table(path: Path) -> Table:
    records = list(jsonl_records(path))
    if not records:
        raise DatasetFormatError("no rows", path)
    for line_no, record in records:
        if not isinstance(record, Mapping):
            raise DatasetFormatError(f"line {line_no}: expected a JSON object, got {type(record).__name__}", path)
    return Table(str(path), list(records[0][1]), records)


def _csv_table(path: Path) -> Table:
    opener = OPENERS.get(path.suffix.lower(), open)
    try:
        with opener(path, "rt", encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            rows = [(reader.line_num, row) for row in reader]      # line_num: the row's last line in the file
            columns = list(reader.fieldnames or [])
    except UnicodeDecodeError as error:
        raise DatasetFormatError(f"not valid UTF-8 ({error.reason})", path) from error
    except (OSError, EOFError, csv.Error) as error:
        raise DatasetFormatError(f"cannot read ({error})", path) from error
    if not columns:
        raise DatasetFormatError("no header row", path)
    return Table(str(path), columns, rows)


def _parquet_table(path: Path) -> Table:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as error:     # pyarrow raises its own error types for a damaged file
        raise DatasetFormatError(f"unreadable parquet file ({error})", path) from error
    return Table(str(path), list(table.column_names), enumerate(table.to_pylist(), 1))


def _text_table(path: Path) -> Table:
    return Table(str(path), ["text"], [(line_no, {"text": line}) for line_no, line in text_lines(path)])


def _from_datasets(loaded: Any, source: str, split: str | None) -> list[Table]:
    from datasets import DatasetDict

    splits = dict(loaded) if isinstance(loaded, DatasetDict) else {split or "train": loaded}
    if split is not None and isinstance(loaded, DatasetDict):
        if split not in splits:
            raise DatasetFormatError(f"no split {split!r}; available: {', '.join(splits)}", source)
        splits = {split: splits[split]}
    return [Table(f"{source} (split {name!r})" if len(splits) > 1 else source, list(ds.column_names),
                  enumerate(ds, 1), "train" if len(splits) == 1 else name)
            for name, ds in splits.items()]


def _from_hub(repo_id: str, config: str | None, split: str | None) -> list[Table]:
    from datasets import load_dataset

    try:
        loaded = load_dataset(repo_id, config, split=split)
    except (ConnectionError, OSError, ValueError) as error:
        raise FileNotFoundError(f"--data {repo_id}: cannot load this Hub dataset ({type(error).__name__}: {error}). "
                                "Offline (HF_HUB_OFFLINE=1), pass a local file or folder instead") from error
    return _from_datasets(loaded, repo_id + (f" (config {config!r})" if config else ""), split)

