"""``--data``: from whatever the user has to one :class:`~smec_hf.data.beir.RetrievalData`.

Three ways in: a BEIR folder or MTEB-layout Hub dataset (queries, corpus, qrels); a Sentence-Transformers table
of ``(anchor, positive[, negative ...])`` rows (:mod:`smec_hf.data.tables`); or a bare corpus (a ``.txt`` file,
a BEIR ``corpus.jsonl``, or a BEIR folder holding only that: no queries, the methods then train without labels).
A path that exists is always read as a file or folder, never taken for a Hub id, and a path-like string that does
not exist is reported as a missing path.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .beir import COMPRESSED_SUFFIXES, DEFAULT_DATASET, DatasetFormatError, NotRetrievalLayout, RetrievalData, \
    find_file, load_beir, load_hf_dataset
from .tables import FILE_SUFFIXES, add_documents, read_tables, tables_to_data


def load_retrieval_data(source: Any = None, *, config: str | None = None, split: str | None = None,
                        corpus: Any = None) -> RetrievalData:
    """The dataset behind ``source`` (default: :data:`~smec_hf.data.beir.DEFAULT_DATASET` from the Hub).

    ``source``: a BEIR folder; a ``.jsonl`` / ``.csv`` / ``.parquet`` / ``.txt`` file or ``save_to_disk`` folder;
    a ``datasets.Dataset`` / ``DatasetDict``; or a Hub id (MTEB retrieval layout, else a pairs table, read with
    ``config`` and ``split``). ``corpus``: extra documents to search over (a corpus file, BEIR folder or table).
    """
    data = _load(DEFAULT_DATASET if source is None else source, config, split)
    if corpus is None:
        return data
    extra = read_tables(_corpus_file(corpus))
    if len(extra) != 1:
        raise DatasetFormatError(f"expected one table of documents, found splits {[t.split for t in extra]}",
                                 f"--corpus {corpus}")
    return add_documents(data, extra[0])


def _load(source: Any, config: str | None, split: str | None) -> RetrievalData:
    if not isinstance(source, (str, Path)):
        return tables_to_data(read_tables(source, config, split), "dataset")
    path = Path(source).expanduser()
    if path.is_dir() and _is_beir(path):
        return load_beir(path) if _has_labels(path) else _corpus_only(path)
    if path.exists():                     # a path that exists is never taken for a Hub id
        return tables_to_data(read_tables(path, config, split), _name(path))
    if isinstance(source, Path) or str(source).startswith((".", "/", "~")) or str(source).count("/") > 1 \
            or path.suffix.lower() in FILE_SUFFIXES:
        raise FileNotFoundError(f"--data {source}: no such file or folder")
    if config is None and split is None:
        try:
            return load_hf_dataset(str(source))
        except NotRetrievalLayout:            # no corpus/queries configs: a pairs table
            pass
    return tables_to_data(read_tables(str(source), config, split), str(source))


def _has_file(folder: Path, name: str) -> bool:
    """``name`` or a compressed copy of it is in ``folder``."""
    return any((folder / (name + suffix)).is_file() for suffix in ("", *COMPRESSED_SUFFIXES))


def _is_beir(folder: Path) -> bool:
    return _has_file(folder, "corpus.jsonl")


def _has_labels(folder: Path) -> bool:
    """A queries file or a qrels folder: the folder is meant to be labelled (and then must be whole)."""
    return (folder / "qrels").exists() or _has_file(folder, "queries.jsonl")


def _corpus_only(folder: Path) -> RetrievalData:
    """A BEIR folder holding only its corpus: the documents alone, to train without labels."""
    return tables_to_data(read_tables(find_file(folder, "corpus.jsonl")), folder.resolve().name)


def _corpus_file(corpus: Any) -> Any:
    """A BEIR folder's corpus file; anything else as given."""
    if isinstance(corpus, (str, Path)) and Path(corpus).expanduser().is_dir() and _is_beir(Path(corpus).expanduser()):
        return find_file(Path(corpus).expanduser(), "corpus.jsonl")
    if isinstance(corpus, (str, Path)) and not Path(corpus).expanduser().exists():
        raise FileNotFoundError(f"--corpus {corpus}: no such file or folder")
    return corpus


def _name(path: Path) -> str:
    return path.resolve().name.split(".")[0] if path.is_file() else path.resolve().name
