"""MTEB retrieval tasks: one built from local data (any BEIR folder or :class:`RetrievalData`), or MTEB's own by name.

A local task needs no network: it hands MTEB the corpus, the queries of one split and their qrels,
and MTEB scores it like any of its retrieval tasks (``ndcg_at_10`` as the main score).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, ClassVar, Sequence

from datasets import Dataset
from mteb.abstasks.retrieval import AbsTaskRetrieval
from mteb.abstasks.retrieval_dataset_loaders import RetrievalSplitData
from mteb.abstasks.task_metadata import TaskMetadata

from ..data.beir import RetrievalData, load_beir
from ..data.sources import load_retrieval_data


def local_task_name(dataset_name: str) -> str:
    """A task name (also a results file name) from a dataset name: ``scifact`` -> ``LocalRetrieval-scifact``."""
    return "LocalRetrieval-" + re.sub(r"[^A-Za-z0-9_.-]+", "_", dataset_name).strip("_")


class LocalRetrievalTask(AbsTaskRetrieval):
    """An MTEB retrieval task over one split of a :class:`RetrievalData` (the whole corpus is searched).

    Build it with :meth:`from_data` or :meth:`from_beir`. MTEB keeps a task's metadata on its class (it
    drops instance copies when unloading data), so each dataset gets its own small subclass.
    Documents are given as their merged ``title + " " + text`` (what :class:`RetrievalData` holds), which
    is exactly the text MTEB would build from separate title and text fields.
    """

    metadata: ClassVar[TaskMetadata]
    data: ClassVar[RetrievalData]
    split: ClassVar[str]

    @classmethod
    def from_data(cls, data: RetrievalData, split: str = "test", *, name: str | None = None,
                  language: str = "eng-Latn") -> "LocalRetrievalTask":
        if split not in data.qrels:
            raise ValueError(f"split={split!r}: dataset {data.name!r} has splits {sorted(data.qrels)}")
        metadata = TaskMetadata(
            name=name or local_task_name(data.name),
            description=f"Retrieval on the {split} split of the local dataset {data.name!r}.",
            reference="https://github.com/beir-cellar/beir",
            # identifiers only, never fetched; the revision is the data's content hash
            dataset={"path": f"local/{data.name}", "revision": data.fingerprint()[:12]},
            type="Retrieval", category="t2t", modalities=["text"], eval_splits=[split], eval_langs=[language],
            main_score="ndcg_at_10", date=None, domains=None, task_subtypes=None, license=None,
            annotations_creators=None, dialect=None, sample_creation=None, bibtex_citation="",
        )
        subclass = type(cls.__name__, (cls,), {"metadata": metadata, "data": data, "split": split})
        return subclass()

    @classmethod
    def from_beir(cls, path: str | Path, split: str = "test", **kwargs: Any) -> "LocalRetrievalTask":
        """The task over a BEIR folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv)."""
        return cls.from_data(load_beir(path), split, **kwargs)

    def load_data(self, num_proc: int | None = None, **kwargs: Any) -> None:
        if self.data_loaded:
            return
        self.dataset = {"default": {self.split: retrieval_split(self.data, self.split)}}
        self.data_loaded = True


def retrieval_split(data: RetrievalData, split: str) -> RetrievalSplitData:
    """What MTEB scores for one split: the whole corpus, the split's judged queries and their qrels.

    Shared by the local task and MTEB's own task classes fed local files, so both score the same data.
    """
    qrels = data.qrels[split]
    queries = [{"id": q, "text": t} for q, t in zip(data.query_ids, data.query_texts) if q in qrels]
    corpus = [{"id": d, "title": "", "text": t} for d, t in zip(data.corpus_ids, data.corpus_texts)]
    return RetrievalSplitData(corpus=Dataset.from_list(corpus), queries=Dataset.from_list(queries),
                              relevant_docs={q: dict(docs) for q, docs in qrels.items()}, top_ranked=None)


def retrieval_tasks(data: RetrievalData | str | Path | None = None, split: str = "test",
                    task_names: Sequence[str] | None = None) -> list[AbsTaskRetrieval]:
    """The tasks to evaluate on: MTEB's own retrieval tasks by name (their data comes from the Hub, so this
    needs network or a warm datasets cache), else the local task over ``data`` (a :class:`RetrievalData`,
    a BEIR folder, a Hub dataset id, or None for the default ``mteb/scifact``)."""
    if task_names:
        import mteb

        tasks = list(mteb.get_tasks(tasks=list(task_names)))
        wrong = [t.metadata.name for t in tasks if not isinstance(t, AbsTaskRetrieval)]
        if wrong:
            raise ValueError(f"task_names: {wrong} are not retrieval tasks")
        return tasks
    if not isinstance(data, RetrievalData):
        data = load_retrieval_data(data)
    return [LocalRetrievalTask.from_data(data, split)]
