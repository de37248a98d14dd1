"""``--group-by FIELD``: each train query's group, read from a BEIR folder's records.

A held-out split by group (:func:`~smec_hf.data.examples.query_groups`) is what lets early stopping and the
do-no-harm check see a head overfit its training topics: on SQuAD, split by article, a head trained with a random
held-out split scored 0.796 at 384 / 256 on held-out queries of the training articles and 0.748 / 0.746 on test
queries of new articles, below PCA's 0.776 / 0.775.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from .beir import DatasetFormatError, find_file, jsonl_records


def _value(record: Any, field: str) -> Any:
    """``record[field]``, else ``record["metadata"][field]``; None when neither holds it."""
    if not isinstance(record, dict):
        return None
    if record.get(field) is not None:
        return record[field]
    metadata = record.get("metadata")
    return metadata.get(field) if isinstance(metadata, dict) else None


def _values(file: Path, field: str, wanted: set[str]) -> dict[str, str]:
    return {str(record["_id"]): str(value) for _, record in jsonl_records(file)
            if isinstance(record, dict) and str(record.get("_id")) in wanted
            and (value := _value(record, field)) is not None}


def field_groups(folder: str | Path, field: str, train_qrels: Mapping[str, Mapping[str, int]]) -> dict[str, str]:
    """By train query id: the query record's ``field`` (top-level or under ``metadata``), else the same field of its
    first relevant document (in id order). A query with neither is an error naming the field and both files."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"--group-by {field}: reads the field from a BEIR folder's queries.jsonl / corpus.jsonl, "
                         f"and --data {folder} is not a folder (use --group-by positive)")
    queries_file, corpus_file = find_file(folder, "queries.jsonl"), find_file(folder, "corpus.jsonl")
    groups = _values(queries_file, field, set(train_qrels))
    first_positive = {q: min(d for d, s in docs.items() if s > 0) for q, docs in train_qrels.items()
                      if q not in groups and any(s > 0 for s in docs.values())}
    by_doc = _values(corpus_file, field, set(first_positive.values()))
    groups.update({q: by_doc[d] for q, d in first_positive.items() if d in by_doc})
    missing = sorted(q for q, docs in train_qrels.items() if q not in groups and any(s > 0 for s in docs.values()))
    if missing:
        raise DatasetFormatError(f"--group-by {field}: {len(missing)} train queries (e.g. {missing[0]!r}) have no "
                                 f"{field!r} field, top-level or under 'metadata', in {queries_file.name} or in their "
                                 f"relevant document of {corpus_file.name}", folder)
    return groups
