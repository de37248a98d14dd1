"""Training examples from cached embeddings: query-positive pairs, graded labels and mined hard negatives.

Hard negatives come from the *frozen* full-dim ranking (the encoder is frozen, so they are mined once),
which gives the ranking loss the near-miss documents that in-batch negatives alone rarely supply.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
from scipy import sparse

from ..core.retrieval import cosine_top_k, rows_as_tensor
from ..core.types import Embeddings, Qrels
from .beir import held_out_split


@dataclass
class Batch:
    """One step's tensors: ``queries [B, D]``, ``docs [M, D]`` (positives + negatives), ``labels [B, M]``."""

    queries: torch.Tensor
    docs: torch.Tensor
    labels: torch.Tensor
    positives: torch.Tensor   # [B, D] each query's paired positive, the frozen inputs S-XBM stores


class RankingExamples:
    """Query rows, their graded qrels as a sparse matrix, positive pairs and a hard-negative pool."""

    def __init__(self, query_ids: Sequence[str], query_vectors: np.ndarray, doc_ids: Sequence[str],
                 doc_vectors: np.ndarray, qrels: Mapping[str, Mapping[str, int]], pool_size: int) -> None:
        doc_index = {d: i for i, d in enumerate(doc_ids)}
        self.query_ids = list(query_ids)
        self.queries = torch.from_numpy(np.array(query_vectors, dtype=np.float32))
        self.docs = doc_vectors
        rows, cols, vals = [], [], []
        for r, qid in enumerate(self.query_ids):
            for did, score in qrels.get(qid, {}).items():
                if score > 0 and did in doc_index:
                    rows.append(r)
                    cols.append(doc_index[did])
                    vals.append(float(score))
        self.labels = sparse.csr_matrix((vals, (rows, cols)), shape=(len(self.query_ids), len(doc_ids)))
        self.pairs = torch.tensor(np.stack([rows, cols], axis=1) if rows else np.zeros((0, 2)), dtype=torch.long)
        self.negative_pool = self._mine(pool_size)

    def _mine(self, pool_size: int) -> torch.Tensor:
        """The top ``pool_size`` frozen-ranking documents of each query that it does not judge relevant."""
        n_positive = int(np.diff(self.labels.indptr).max()) if len(self.query_ids) else 0
        _, top = cosine_top_k(self.queries, self.docs, k=pool_size + n_positive)
        pool = torch.empty(len(self.query_ids), pool_size, dtype=torch.long)
        for r in range(len(self.query_ids)):
            relevant = set(self.labels.indices[self.labels.indptr[r] : self.labels.indptr[r + 1]].tolist())
            negatives = [j for j in top[r].tolist() if j not in relevant][:pool_size]
            pool[r, : len(negatives)] = torch.tensor(negatives, dtype=torch.long)
            pool[r, len(negatives) :] = negatives[-1] if negatives else 0
        return pool

    def doc_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """Gather document vectors (a memmap is read only at these rows)."""
        return rows_as_tensor(self.docs, rows.numpy())

    def batch(self, pair_index: torch.Tensor, n_negatives: int, generator: torch.Generator | None = None,
              deterministic: bool = False) -> Batch:
        """Build a step: in-batch positives of all queries + ``n_negatives`` mined negatives per query.

        ``deterministic`` takes the top of each pool instead of sampling (for held-out losses).
        """
        q_rows, pos_rows = self.pairs[pair_index, 0], self.pairs[pair_index, 1]
        if n_negatives and deterministic:
            negatives = self.negative_pool[q_rows, :n_negatives]
        elif n_negatives:
            pick = torch.randint(self.negative_pool.shape[1], (len(q_rows), n_negatives), generator=generator)
            negatives = self.negative_pool[q_rows[:, None], pick]
        else:
            negatives = torch.zeros(len(q_rows), 0, dtype=torch.long)
        candidates = torch.unique(torch.cat([pos_rows, negatives.flatten()]))
        labels = self.labels[q_rows.numpy()][:, candidates.numpy()].toarray()
        docs = self.doc_rows(candidates)
        positives = docs[torch.searchsorted(candidates, pos_rows)]
        return Batch(self.queries[q_rows], docs, torch.as_tensor(labels, dtype=torch.float32), positives)


def fit_and_held_out_ids(train_qrels: Qrels, known: Iterable[str], held_out_fraction: float,
                         seed: int) -> tuple[list[str], list[str]]:
    """The train queries with a relevant document and a vector (in ``known``), split into fit and held-out ids:
    the one split every supervised method trains and early-stops on."""
    known = set(known)
    train_ids = sorted(q for q, docs in train_qrels.items() if q in known and any(s > 0 for s in docs.values()))
    if len(train_ids) < 2:
        raise ValueError(f"train_qrels: need at least 2 train queries with relevant documents in the cache, "
                         f"found {len(train_ids)}")
    fit_ids, held_ids = held_out_split(train_ids, held_out_fraction, seed)
    if not fit_ids or not held_ids:
        raise ValueError(f"held_out_fraction={held_out_fraction} leaves an empty fit or held-out set")
    return fit_ids, held_ids


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

    @classmethod
    def build(cls, cache: Embeddings, train_qrels: Qrels, held_out_fraction: float, seed: int,
              pool_size: int) -> "TrainingExamples":
        fit_ids, held_ids = fit_and_held_out_ids(train_qrels, cache.query_ids, held_out_fraction, seed)
        qrels = {q: dict(train_qrels[q]) for q in sorted(fit_ids + held_ids)}
        q_index = cache.query_index()

        def examples(ids: list[str]) -> RankingExamples:
            return RankingExamples(ids, cache.queries[[q_index[q] for q in ids]], cache.corpus_ids, cache.corpus,
                                   qrels, pool_size)

        return cls(cache, examples(fit_ids), examples(held_ids), qrels)

    def epoch_batches(self, batch_size: int, n_negatives: int, order: torch.Generator,
                      negatives: torch.Generator) -> Iterator[Batch]:
        """One shuffled pass over the fit pairs: ``batch_size`` pairs + ``n_negatives`` mined negatives per query.

        ``order`` draws the permutation and ``negatives`` the sampled negatives (they may be one generator).
        """
        permutation = torch.randperm(len(self.fit.pairs), generator=order)
        for pair_index in permutation.split(batch_size):
            yield self.fit.batch(pair_index, n_negatives, negatives)
