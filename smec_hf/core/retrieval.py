"""Exact cosine retrieval over cached vectors and nDCG@10 scored by ``pytrec_eval`` (MTEB's scorer).

Used for early stopping on held-out train queries and for the quick per-dimension table that
``smec train`` prints; the MTEB runs in ``smec evaluate`` go through MTEB itself.
"""
from __future__ import annotations

from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import pytrec_eval
import torch
import torch.nn.functional as F

from .types import Embeddings


BLOCK_SCORES = 1 << 25   # at most this many query-document scores at a time (128 MiB): many queries, smaller chunks


def rows_as_tensor(data: np.ndarray | torch.Tensor, rows: slice | np.ndarray) -> torch.Tensor:
    """Read rows of an array, (read-only) memmap or lazy view into a fresh float32 tensor."""
    chunk = data[rows]
    if isinstance(chunk, torch.Tensor):
        return chunk.float()
    return torch.from_numpy(np.array(chunk, dtype=np.float32))


@torch.no_grad()
def cosine_top_k(queries: torch.Tensor, docs: np.ndarray | torch.Tensor, k: int = 10,
                 chunk_size: int = 65536) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-``k`` documents per query by cosine, streaming ``docs`` (may be a memmap) in chunks."""
    dim = queries.shape[1]
    return streamed_top_k(queries, docs, lambda x: x, [dim], chunk_size, k)[dim]


@torch.no_grad()
def streamed_top_k(queries: torch.Tensor, docs: np.ndarray | torch.Tensor,
                   encode: Callable[[torch.Tensor], torch.Tensor], dims: Sequence[int], chunk_size: int = 65536,
                   k: int = 10) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Each query's exact top ``k`` (scores, rows of ``docs``) at each of ``dims``, comparing the first ``d``
    coordinates of ``queries`` with those of ``encode(docs)`` by cosine: one pass over ``docs``, each chunk encoded
    once for every dim and never all of it held (the score block is bounded by :data:`BLOCK_SCORES`)."""
    chunk_size = max(1024, min(chunk_size, BLOCK_SCORES // max(len(queries), 1)))
    unit = {d: F.normalize(queries[:, :d].float(), dim=-1) for d in dims}
    best = {d: (torch.empty(len(queries), 0), torch.empty(len(queries), 0, dtype=torch.long)) for d in dims}
    for start in range(0, len(docs), chunk_size):
        chunk = encode(rows_as_tensor(docs, slice(start, start + chunk_size)))
        for d in dims:
            top = (unit[d] @ F.normalize(chunk[:, :d].float(), dim=-1).T).topk(min(k, len(chunk)), dim=1)
            scores = torch.cat([best[d][0], top.values], dim=1)
            rows = torch.cat([best[d][1], top.indices + start], dim=1)
            keep = scores.topk(min(k, scores.shape[1]), dim=1)
            best[d] = (keep.values, rows.gather(1, keep.indices))
    return best


def ndcg_at_10(run: Mapping[str, Mapping[str, float]], qrels: Mapping[str, Mapping[str, int]]) -> float:
    """Mean nDCG@10 over the judged queries (``pytrec_eval``'s ``ndcg_cut_10``, as MTEB computes it)."""
    return float(np.mean(list(per_query_ndcg(run, qrels).values())))


def evaluate_retrieval(query_ids: Sequence[str], query_vectors: torch.Tensor, doc_ids: Sequence[str],
                       doc_vectors: np.ndarray | torch.Tensor, qrels: Mapping[str, Mapping[str, int]],
                       k: int = 10) -> float:
    """nDCG@10 of exact cosine search of ``query_vectors`` over ``doc_vectors``."""
    return float(np.mean(list(retrieval_per_query(query_ids, query_vectors, doc_ids, doc_vectors, qrels,
                                                  k).values())))


def retrieval_per_query(query_ids: Sequence[str], query_vectors: torch.Tensor, doc_ids: Sequence[str],
                        doc_vectors: np.ndarray | torch.Tensor, qrels: Mapping[str, Mapping[str, int]],
                        k: int = 10) -> dict[str, float]:
    """:func:`evaluate_retrieval` per judged query (what paired intervals resample)."""
    run = top_k_run(query_ids, *cosine_top_k(torch.as_tensor(query_vectors), doc_vectors, k=k), doc_ids)
    return per_query_ndcg(run, {q: qrels[q] for q in query_ids if q in qrels})


def top_k_run(query_ids: Sequence[str], scores: torch.Tensor, rows: torch.Tensor, doc_ids: Sequence[str]
              ) -> dict[str, dict[str, float]]:
    """Each query's top documents (``scores`` and corpus ``rows``, one row per query) as a ``pytrec_eval`` run."""
    return {qid: {doc_ids[j]: float(s) for s, j in zip(row_s.tolist(), row_i.tolist())}
            for qid, row_s, row_i in zip(query_ids, scores, rows)}


def cached_queries(cache: Embeddings, qrels: Mapping[str, Mapping[str, int]]) -> tuple[list[str], np.ndarray]:
    """The ``qrels`` queries that have a cached vector, and those vectors (float32), in ``qrels`` order."""
    q_index = cache.query_index()
    query_ids = [q for q in qrels if q in q_index]
    if not query_ids:
        raise ValueError("none of the evaluation queries is in the embedding cache")
    return query_ids, np.asarray(cache.queries[[q_index[q] for q in query_ids]], dtype=np.float32)


class MappedRows:
    """Rows of a (memory-mapped) matrix passed through ``fn`` lazily, one slice at a time."""

    def __init__(self, data: np.ndarray, fn: Callable[[np.ndarray], np.ndarray | torch.Tensor]) -> None:
        self.data, self.fn = data, fn

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, rows: slice) -> torch.Tensor:
        return torch.as_tensor(self.fn(np.array(self.data[rows], dtype=np.float32)), dtype=torch.float32)


def per_query_ndcg_by_dim(transform: Callable[[np.ndarray, int], np.ndarray | torch.Tensor], cache: Embeddings,
                          qrels: Mapping[str, Mapping[str, int]], dims: Sequence[int]) -> dict[int, dict[str, float]]:
    """``{dim: {query id: nDCG@10}}`` of ``qrels``' cached queries, queries and corpus mapped by ``transform(x, dim)``."""
    query_ids, queries = cached_queries(cache, qrels)
    return {dim: retrieval_per_query(query_ids, torch.as_tensor(transform(queries, dim), dtype=torch.float32),
                                     cache.corpus_ids, MappedRows(cache.corpus, lambda x, d=dim: transform(x, d)),
                                     qrels)
            for dim in dims}


def ndcg_by_dim(transform: Callable[[np.ndarray, int], np.ndarray | torch.Tensor], cache: Embeddings,
                qrels: Mapping[str, Mapping[str, int]], dims: Sequence[int]) -> dict[int, float]:
    """nDCG@10 of ``qrels``' queries at every dim: the means of :func:`per_query_ndcg_by_dim`."""
    return {dim: float(np.mean(list(scores.values())))
            for dim, scores in per_query_ndcg_by_dim(transform, cache, qrels, dims).items()}


def neighbour_recall(transform: Callable[[np.ndarray, int], np.ndarray | torch.Tensor], cache: Embeddings,
                     dims: Sequence[int], exclude_ids: Iterable[str] = (), n_probe: int = 1000, k: int = 10,
                     seed: int = 0) -> dict[int, float]:
    """The mean over probes of :func:`neighbour_recall_per_probe`."""
    return {dim: float(v.mean()) for dim, v in neighbour_recall_per_probe(transform, cache, dims, exclude_ids, n_probe,
                                                                          k, seed).items()}


def neighbour_recall_per_probe(transform: Callable[[np.ndarray, int], np.ndarray | torch.Tensor], cache: Embeddings,
                               dims: Sequence[int], exclude_ids: Iterable[str] = (), n_probe: int = 1000, k: int = 10,
                               seed: int = 0) -> dict[int, np.ndarray]:
    """Label-free fidelity: recall@``k`` of each probe document's frozen full-dimension neighbours, retrieved
    over the whole corpus with the method's ``dim``-dim vectors ("does the small embedding find the same
    neighbours?"). Probes are a seeded sample of at most ``n_probe`` corpus documents outside ``exclude_ids``
    (pass the train positives, so that what training saw is not scored); each probe itself is not counted.
    """
    excluded = set(exclude_ids)
    candidates = np.array([i for i, d in enumerate(cache.corpus_ids) if d not in excluded])
    if len(candidates) < 1 or len(cache.corpus_ids) <= k:
        raise ValueError(f"neighbour recall@{k} needs more than {k} documents and at least one probe")
    probes = np.sort(np.random.default_rng(seed).choice(candidates, min(n_probe, len(candidates)), replace=False))
    full = rows_as_tensor(cache.corpus, probes)

    def neighbours(queries: torch.Tensor, docs) -> torch.Tensor:
        _, index = cosine_top_k(queries, docs, k=k + 1)
        keep = index != torch.as_tensor(probes)[:, None]            # drop the probe itself, keep k
        return torch.stack([row[mask][:k] for row, mask in zip(index, keep)])

    truth = neighbours(full, cache.corpus)
    scores = {}
    for dim in dims:
        found = neighbours(torch.as_tensor(transform(full.numpy(), dim), dtype=torch.float32),
                           MappedRows(cache.corpus, lambda x, d=dim: transform(x, d)))
        hits = [len(set(a.tolist()) & set(b.tolist())) for a, b in zip(truth, found)]
        scores[dim] = np.asarray(hits, dtype=np.float64) / k     # per probe, in probe order (paired across methods)
    return scores


def per_query_ndcg(run: Mapping[str, Mapping[str, float]], qrels: Mapping[str, Mapping[str, int]]) -> dict[str, float]:
    """nDCG@10 of every judged query (``pytrec_eval``'s ``ndcg_cut_10``; 0.0 where ``run`` has no results),
    the per-query scores that paired significance tests resample; :func:`ndcg_at_10` is their mean."""
    judged = {q: {d: int(s) for d, s in docs.items()} for q, docs in qrels.items() if docs}
    if not judged:
        raise ValueError("no judged queries to evaluate")
    evaluator = pytrec_eval.RelevanceEvaluator(judged, {"ndcg_cut.10"})
    scores = evaluator.evaluate({q: {d: float(s) for d, s in run.get(q, {}).items()} for q in judged})
    return {q: float(scores[q]["ndcg_cut_10"]) if q in scores else 0.0 for q in judged}
