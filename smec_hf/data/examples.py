"""Training examples from cached embeddings: query-positive pairs, graded labels and mined hard negatives.

Hard negatives come from the *frozen* full-dim ranking (the encoder is frozen, so they are mined once),
which gives the ranking loss the near-miss documents that in-batch negatives alone rarely supply.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
from scipy import sparse

from ..core.config import FitConfig
from ..core.retrieval import cosine_top_k, rows_as_tensor
from ..core.search import CandidateSet
from ..core.types import Embeddings, Qrels
from .beir import held_out_split
from .mining import mined_rows

HELD_OUT_DEPTH = 100   # frozen top documents per held-out query in its candidate set (above the exact size)


@dataclass
class Batch:
    """One step's tensors, or one process's part of them (see :meth:`RankingExamples.batch`): ``queries [B, D]``,
    ``docs [M, D]`` (positives + negatives), ``labels [B, M]``.

    A part holds its share of the step's queries and of its candidates, and its queries' labels against every
    candidate of the step (``labels [b, M_total]``, columns in part order), so the parts' encoded candidates,
    gathered in part order, are the one-process candidates.
    """

    queries: torch.Tensor
    docs: torch.Tensor
    labels: torch.Tensor
    positives: torch.Tensor   # [B, D] each query's paired positive, the frozen inputs S-XBM stores
    doc_counts: list[int]     # every part's number of candidates, in part order (what the parts gather)
    rows_read: int            # corpus rows read to build this part: its candidates and its positives outside them


class RankingExamples:
    """Query rows, their graded qrels as a sparse matrix, positive pairs, given negatives and a hard-negative pool.

    A document judged with score 0 is a *given* negative (a triplet table's negative column, or a BEIR qrel of 0):
    every batch that holds its query ranks it below the query's positives, beside the sampled mined negatives.
    """

    def __init__(self, query_ids: Sequence[str], query_vectors: np.ndarray, doc_index: Mapping[str, int],
                 doc_vectors: np.ndarray, qrels: Mapping[str, Mapping[str, int]], pool_size: int,
                 frozen_top: np.ndarray) -> None:
        """``frozen_top``: each query's top corpus rows under the frozen vectors (best first, -1 = none; see
        :mod:`smec_hf.data.mining`), deep enough to hold ``pool_size`` negatives after its positives."""
        self.query_ids = list(query_ids)
        self.queries = torch.from_numpy(np.array(query_vectors, dtype=np.float32))
        self.docs = doc_vectors
        rows, cols, vals = [], [], []
        given: list[list[int]] = [[] for _ in self.query_ids]
        for r, qid in enumerate(self.query_ids):
            for did, score in qrels.get(qid, {}).items():
                if did not in doc_index:
                    continue
                if score > 0:
                    rows.append(r)
                    cols.append(doc_index[did])
                    vals.append(float(score))
                elif score == 0:
                    given[r].append(doc_index[did])
        self.labels = sparse.csr_matrix((vals, (rows, cols)), shape=(len(self.query_ids), len(doc_vectors)))
        self.pairs = torch.tensor(np.stack([rows, cols], axis=1) if rows else np.zeros((0, 2)), dtype=torch.long)
        width = max(map(len, given), default=0)
        self.given_negatives = torch.tensor([g + [-1] * (width - len(g)) for g in given], dtype=torch.long).reshape(
            len(given), width)                   # [n_queries, most given], -1 = no more
        self.frozen_top = frozen_top
        self.negative_pool = self._negatives(pool_size)

    def _negatives(self, pool_size: int) -> torch.Tensor:
        """The top ``pool_size`` frozen-ranking documents of each query that it does not judge relevant."""
        pool = torch.empty(len(self.query_ids), pool_size, dtype=torch.long)
        for r in range(len(self.query_ids)):
            relevant = set(self.labels.indices[self.labels.indptr[r] : self.labels.indptr[r + 1]].tolist())
            negatives = [j for j in self.frozen_top[r].tolist() if j >= 0 and j not in relevant][:pool_size]
            pool[r, : len(negatives)] = torch.tensor(negatives, dtype=torch.long)
            pool[r, len(negatives) :] = negatives[-1] if negatives else 0
        return pool

    def doc_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """Gather document vectors (a memmap is read only at these rows)."""
        return rows_as_tensor(self.docs, rows.numpy())

    def batch(self, pair_index: torch.Tensor, n_negatives: int, generator: torch.Generator | None = None,
              deterministic: bool = False, part: tuple[int, int] = (0, 1)) -> Batch:
        """Build a step: in-batch positives of all queries, their given negatives, + ``n_negatives`` mined
        negatives per query.

        ``deterministic`` takes the top of each pool instead of sampling (for held-out losses).
        ``part = (index, count)`` builds only part ``index`` of ``count`` (a process's share under DDP): its
        contiguous share of the queries and of the step's sorted unique candidates, reading only those rows (and
        its queries' positives that another part holds). The negatives are drawn for the whole step, so every
        part sees the same candidates and ``generator`` stays in step across parts.
        """
        index, count = part
        q_rows, pos_rows = self.pairs[pair_index, 0], self.pairs[pair_index, 1]
        if n_negatives and deterministic:
            negatives = self.negative_pool[q_rows, :n_negatives]
        elif n_negatives:
            pick = torch.randint(self.negative_pool.shape[1], (len(q_rows), n_negatives), generator=generator)
            negatives = self.negative_pool[q_rows[:, None], pick]
        else:
            negatives = torch.zeros(len(q_rows), 0, dtype=torch.long)
        given = self.given_negatives[q_rows].flatten()
        candidates = torch.unique(torch.cat([pos_rows, negatives.flatten(), given[given >= 0]]))
        slices = torch.tensor_split(candidates, count)
        q_rows, pos_rows = torch.tensor_split(q_rows, count)[index], torch.tensor_split(pos_rows, count)[index]
        labels = self.labels[q_rows.numpy()][:, candidates.numpy()].toarray()
        docs = self.doc_rows(slices[index])
        # a positive is a candidate: take it from this part's slice, read it only when another part holds it
        at = torch.searchsorted(candidates, pos_rows) - sum(len(c) for c in slices[:index])
        inside = (at >= 0) & (at < len(docs))
        positives = torch.empty(len(pos_rows), docs.shape[1], dtype=docs.dtype)
        positives[inside] = docs[at[inside]]
        positives[~inside] = self.doc_rows(pos_rows[~inside])
        return Batch(self.queries[q_rows], docs, torch.as_tensor(labels, dtype=torch.float32), positives,
                     [len(c) for c in slices], len(docs) + int((~inside).sum()))


def query_groups(train_qrels: Qrels, query_ids: Sequence[str], group_by: str = FitConfig.group_by,
                 given: Mapping[str, str] | None = None) -> dict[str, str]:
    """Each query's group for the held-out split (see ``FitConfig.group_by``).

    "positive" joins queries that share a relevant document (connected components), so a held-out query never
    asks about a document a fitted query was trained towards; "query" puts each query on its own; any other value
    names a field whose values, by query id, are ``given`` (read from the data by the pipeline).
    """
    if group_by == "query":
        return {q: q for q in query_ids}
    if group_by != "positive":
        if given is None:
            raise ValueError(f"group_by={group_by!r} needs the field's values by query id (FitConfig.query_groups), "
                             "which the pipeline reads from a BEIR folder")
        missing = [q for q in query_ids if q not in given]
        if missing:
            raise ValueError(f"group_by={group_by!r}: {len(missing)} train queries have no value, e.g. {missing[0]!r}")
        return {q: str(given[q]) for q in query_ids}
    parent: dict[str, str] = {}

    def root(x: str) -> str:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for q in query_ids:
        for d, score in train_qrels[q].items():
            if score > 0:
                parent[root("q\0" + q)] = root("d\0" + d)
    return {q: root("q\0" + q) for q in query_ids}


def fit_and_held_out_ids(train_qrels: Qrels, known: Iterable[str], held_out_fraction: float, seed: int,
                         group_by: str = FitConfig.group_by, groups: Mapping[str, str] | None = None
                         ) -> tuple[list[str], list[str]]:
    """The train queries with a relevant document and a vector (in ``known``), split into fit and held-out ids:
    the one split every supervised method trains and early-stops on.

    Whole groups (:func:`query_groups`) are held out, ``held_out_fraction`` of them: single queries by default
    (new queries over the same corpus), or queries grouped by relevant document or a field, so that the held-out
    score measures what the head does on documents (or articles) it was not fitted to.
    """
    known = set(known)
    train_ids = sorted(q for q, docs in train_qrels.items() if q in known and any(s > 0 for s in docs.values()))
    if len(train_ids) < 2:
        raise ValueError(f"train_qrels: need at least 2 train queries with relevant documents in the cache, "
                         f"found {len(train_ids)}")
    group_of = query_groups(train_qrels, train_ids, group_by, groups)
    _, held_groups = held_out_split(sorted(set(group_of.values())), held_out_fraction, seed)
    held = set(held_groups)
    fit_ids = [q for q in train_ids if group_of[q] not in held]
    held_ids = [q for q in train_ids if group_of[q] in held]
    if not fit_ids or not held_ids:
        raise ValueError(f"held_out_fraction={held_out_fraction} with group_by={group_by!r} leaves an empty fit or "
                         f"held-out set ({len(set(group_of.values()))} groups)")
    return fit_ids, held_ids


def split_for(config: FitConfig, train_qrels: Qrels, known: Iterable[str]) -> tuple[list[str], list[str]]:
    """:func:`fit_and_held_out_ids` with a method's settings (fraction, seed, grouping)."""
    return fit_and_held_out_ids(train_qrels, known, config.held_out_fraction, config.seed, config.group_by,
                                config.query_groups)


@dataclass
class TrainingExamples:
    """The train queries with a relevant document in the cache, split into fit and held-out examples.

    SMEC and every supervised baseline build this with the same fraction and seed, so all of them see the
    same examples and are early-stopped on the same held-out queries; the test split is never seen here.
    """

    cache: Embeddings
    fit: RankingExamples
    held: RankingExamples
    qrels: dict[str, dict[str, int]]
    exact_max_docs: int = FitConfig.exact_search_max_docs

    @classmethod
    def for_config(cls, cache: Embeddings, train_qrels: Qrels, config: FitConfig) -> "TrainingExamples":
        """The examples a method with ``config`` trains on (its split, grouping and negative pool)."""
        return cls.build(cache, train_qrels, config.held_out_fraction, config.seed, config.hard_negative_pool,
                         config.group_by, config.query_groups, config.exact_search_max_docs)

    @classmethod
    def build(cls, cache: Embeddings, train_qrels: Qrels, held_out_fraction: float, seed: int,
              pool_size: int, group_by: str = FitConfig.group_by, groups: Mapping[str, str] | None = None,
              exact_max_docs: int = FitConfig.exact_search_max_docs) -> "TrainingExamples":
        fit_ids, held_ids = fit_and_held_out_ids(train_qrels, cache.query_ids, held_out_fraction, seed, group_by,
                                                 groups)
        ids = sorted(fit_ids + held_ids)
        qrels = {q: dict(train_qrels[q]) for q in ids}
        q_index, doc_index = cache.query_index(), cache.doc_index()
        most_positives = max(sum(s > 0 and d in doc_index for d, s in qrels[q].items()) for q in ids)
        # one frozen ranking of every train query serves the negative pools and the held-out candidate sets
        top = mined_rows(cache, np.array([q_index[q] for q in ids]),
                         max(pool_size, HELD_OUT_DEPTH) + most_positives, exact_max_docs)
        position = {q: i for i, q in enumerate(ids)}

        def examples(subset: list[str]) -> RankingExamples:
            return RankingExamples(subset, cache.queries[[q_index[q] for q in subset]], doc_index, cache.corpus,
                                   qrels, pool_size, np.asarray(top[[position[q] for q in subset]]))

        return cls(cache, examples(fit_ids), examples(held_ids), qrels, exact_max_docs)

    @property
    def scans_corpus(self) -> bool:
        """Whether held-out queries are scored against the whole corpus (small corpora) or, above
        ``exact_max_docs``, against :meth:`held_out_candidates` only."""
        return len(self.cache.corpus) <= self.exact_max_docs

    @functools.cached_property
    def held_out_candidates(self) -> CandidateSet:
        """Each held-out query's frozen top :data:`HELD_OUT_DEPTH` documents and every document it judges: the set
        its nDCG@10 is computed on at scale, fixed once per run (MTEB's reranking setting). A trained head can then
        only reorder what the frozen encoder found in its top hundred, so the score is a proxy for the full search, good for
        early stopping, cost O(held-out queries x depth) per evaluation instead of O(corpus)."""
        held = self.held
        judged = [[j for j in held.labels.indices[held.labels.indptr[r] : held.labels.indptr[r + 1]]]
                  + [j for j in held.given_negatives[r].tolist() if j >= 0] for r in range(len(held.query_ids))]
        return CandidateSet.build(np.asarray(held.frozen_top)[:, :HELD_OUT_DEPTH], judged)

    def epoch_batches(self, batch_size: int, n_negatives: int, order: torch.Generator,
                      negatives: torch.Generator, part: tuple[int, int] = (0, 1),
                      piece: tuple[int, int] = (0, 1)) -> Iterator[Batch]:
        """One shuffled pass over the fit pairs, or piece ``index`` of ``count`` of it (see :func:`epoch_pieces`):
        ``batch_size`` pairs + ``n_negatives`` mined negatives per query.

        ``order`` draws the permutation and ``negatives`` the sampled negatives (they may be one generator);
        ``part``: build only this process's part of each step (see :meth:`RankingExamples.batch`).
        """
        permutation = torch.randperm(len(self.fit.pairs), generator=order).tensor_split(piece[1])[piece[0]]
        for pair_index in permutation.split(batch_size):
            yield self.fit.batch(pair_index, n_negatives, negatives, part=part)


def epoch_pieces(n_items: int, epoch_items: int) -> int:
    """How many training epochs one shuffled pass over ``n_items`` is split into (``FitConfig.epoch_pairs``): 1 when
    ``epoch_items`` is 0 or covers them all."""
    return 1 if not epoch_items or epoch_items >= n_items else -(-n_items // epoch_items)


PROBE_FRACTION = 0.1   # share of a corpus-only dataset's documents kept for the report's neighbour recall


def probe_documents(doc_ids: Sequence[str], fraction: float = PROBE_FRACTION) -> list[str]:
    """The documents a corpus-only run keeps out of training (fit and early stopping) to report neighbour recall
    on: chosen by sha256 of the id with a fixed seed, so every method and every run leaves out the same ones."""
    return held_out_split(list(doc_ids), fraction, seed=-1)[1]


@dataclass
class CorpusBatch:
    """One step of label-free training: ``docs [B, D]`` and each one's frozen nearest documents ``neighbours [B, K, D]``."""

    docs: torch.Tensor
    neighbours: torch.Tensor


@dataclass
class CorpusExamples:
    """Documents for training without labels: fit rows, each with its ``top_k`` frozen nearest fit documents, and
    held-out documents whose neighbour recall decides early stopping.

    At most ``max_rows`` fit documents are kept (a seeded sample; Matryoshka-Adaptor's paper uses 50,000), so the
    neighbour search and the epoch stay bounded on a large corpus.
    """

    cache: Embeddings
    fit_rows: np.ndarray            # rows of the cache's corpus
    vectors: torch.Tensor           # [n_fit, D] their frozen vectors
    neighbours: torch.Tensor        # [n_fit, K] indices into ``vectors``
    held_ids: list[str]             # early-stopping documents (empty with held_out_fraction 0)

    @classmethod
    def build(cls, cache: Embeddings, held_out_fraction: float, seed: int, top_k: int = 10,
              max_rows: int = 50_000, exclude: Iterable[str] = ()) -> "CorpusExamples":
        excluded = set(exclude)
        ids = [d for d in cache.corpus_ids if d not in excluded]
        fit_ids, held_ids = held_out_split(ids, held_out_fraction, seed) if held_out_fraction else (ids, [])
        index = cache.doc_index()
        rows = np.array([index[d] for d in fit_ids], dtype=np.int64)
        if len(rows) > max_rows:
            rows = np.sort(np.random.default_rng(seed).choice(rows, max_rows, replace=False))
        if len(rows) < 2:
            raise ValueError(f"label-free training needs at least 2 documents to fit on, found {len(rows)}")
        vectors = rows_as_tensor(cache.corpus, rows)
        k = min(top_k, len(vectors) - 1)
        _, nearest = cosine_top_k(vectors, vectors, k=k + 1)
        is_self = nearest == torch.arange(len(vectors))[:, None]
        # move each document itself (normally the first hit, not always when vectors repeat) behind the others
        order = torch.argsort(is_self.int(), dim=1, stable=True)
        return cls(cache, rows, vectors, nearest.gather(1, order)[:, :k], held_ids)

    def __len__(self) -> int:
        return len(self.vectors)

    def batch(self, rows: torch.Tensor) -> CorpusBatch:
        return CorpusBatch(self.vectors[rows], self.vectors[self.neighbours[rows]])

    def epoch_rows(self, batch_size: int, order: torch.Generator, piece: tuple[int, int] = (0, 1)
                   ) -> Iterator[torch.Tensor]:
        """One shuffled pass over the fit documents (or piece ``index`` of ``count`` of it), as the row indices of
        each step (see :meth:`batch`)."""
        return iter(torch.randperm(len(self.vectors), generator=order).tensor_split(piece[1])[piece[0]].split(batch_size))
