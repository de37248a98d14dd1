"""Early-stopping scores: nDCG@10 of held-out *train* queries (never test), or, with no labels at all, the neighbour
recall@10 of held-out corpus documents.

Small corpora are searched exactly every evaluation. Above ``exact_search_max_docs`` each held-out query is scored
on its fixed candidate set (:attr:`~smec_hf.data.examples.TrainingExamples.held_out_candidates`): only those rows
are read and encoded, in chunks, so an evaluation costs O(held-out queries x depth), not O(corpus).
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..core.retrieval import neighbour_recall_per_probe, per_query_ndcg, rows_as_tensor, streamed_top_k, top_k_run
from ..core.search import CandidateSet
from ..core.types import Embeddings
from ..data.examples import TrainingExamples

PAIR_CHUNK = 16384   # (query, candidate) pairs scored at a time: bounds the gathered [pairs, k] block


@torch.no_grad()
def held_out_ndcg_per_query(examples: TrainingExamples, encode: Callable[[torch.Tensor], torch.Tensor],
                            dims: Sequence[int], chunk_size: int = 16384, full_scan: bool | None = None
                            ) -> dict[int, np.ndarray]:
    """Held-out nDCG@10 of every held-out query (in ``examples.held.query_ids`` order) at each of ``dims``, for a
    nested method whose k-dim output is the prefix of ``encode``'s: what the noise-aware decisions pair up.

    ``full_scan`` (default: below ``exact_search_max_docs``) searches the whole corpus, streaming it once for all
    ``dims`` in chunks (the cache may be a memmap); otherwise each query's fixed candidate set is scored.
    """
    ids = examples.held.query_ids
    queries = encode(examples.held.queries)
    if examples.scans_corpus if full_scan is None else full_scan:
        doc_ids = examples.cache.corpus_ids
        tops = streamed_top_k(queries, examples.cache.corpus, encode, dims, chunk_size)
        by_dim = {k: per_query_ndcg(top_k_run(ids, *top, doc_ids), {q: examples.qrels[q] for q in ids})
                  for k, top in tops.items()}
    else:
        candidates = examples.held_out_candidates
        doc_ids = examples.cache.corpus_ids
        scores = candidate_scores(queries, examples.cache.corpus, candidates, encode, dims, chunk_size)
        by_dim = {k: per_query_ndcg(_top_runs(ids, candidates, s, doc_ids), {q: examples.qrels[q] for q in ids})
                  for k, s in scores.items()}
    return {k: np.array([scores[q] for q in ids]) for k, scores in by_dim.items()}


def candidate_scores(queries: torch.Tensor, corpus: np.ndarray, candidates: CandidateSet,
                     encode: Callable[[torch.Tensor], torch.Tensor], dims: Sequence[int], chunk_size: int = 65536
                     ) -> dict[int, torch.Tensor]:
    """The cosine of every (query, candidate) pair of ``candidates`` at each of ``dims`` (prefixes of ``encode``'s
    output), reading and encoding the candidate rows chunk by chunk."""
    unit = {k: F.normalize(queries[:, :k].float(), dim=-1) for k in dims}
    scores = {k: torch.empty(len(candidates.pair_slot)) for k in dims}
    bounds = np.searchsorted(candidates.pair_slot, np.arange(0, len(candidates.rows) + chunk_size, chunk_size))
    for n, start in enumerate(range(0, len(candidates.rows), chunk_size)):
        docs = encode(rows_as_tensor(corpus, candidates.rows[start:start + chunk_size]))
        unit_docs = {k: F.normalize(docs[:, :k].float(), dim=-1) for k in dims}
        for lo in range(int(bounds[n]), int(bounds[n + 1]), PAIR_CHUNK):
            hi = min(lo + PAIR_CHUNK, int(bounds[n + 1]))
            probe = torch.from_numpy(candidates.pair_probe[lo:hi])
            slot = torch.from_numpy(candidates.pair_slot[lo:hi] - start)
            for k in dims:
                scores[k][lo:hi] = (unit[k][probe] * unit_docs[k][slot]).sum(-1)
    return scores


def _top_runs(ids: Sequence[str], candidates: CandidateSet, scores: torch.Tensor, doc_ids: Sequence[str],
              k: int = 10) -> dict[str, dict[str, float]]:
    """Each query's ``k`` best candidates by ``scores``, as a ``pytrec_eval`` run."""
    order = np.lexsort((-scores.numpy(), candidates.pair_probe))     # by query, best first
    probe = candidates.pair_probe[order]
    starts = np.searchsorted(probe, np.arange(len(ids) + 1))
    run = {}
    for i, qid in enumerate(ids):
        best = order[starts[i]:min(starts[i] + k, starts[i + 1])]
        run[qid] = {doc_ids[int(candidates.rows[candidates.pair_slot[j]])]: float(scores[j]) for j in best}
    return run


def held_out_ndcg(examples: TrainingExamples, encode: Callable[[torch.Tensor], torch.Tensor], dims: Sequence[int],
                  chunk_size: int = 65536) -> dict[int, float]:
    """Mean held-out nDCG@10 at each of ``dims`` (see :func:`held_out_ndcg_per_query`)."""
    return {k: float(v.mean()) for k, v in held_out_ndcg_per_query(examples, encode, dims, chunk_size).items()}


@torch.no_grad()
def held_out_neighbour_recall_per_doc(cache: Embeddings, held_ids: Sequence[str],
                                      encode: Callable[[torch.Tensor], torch.Tensor], dims: Sequence[int]
                                      ) -> dict[int, np.ndarray]:
    """Recall@10, at each of ``dims``, of the frozen full-dim nearest documents of each held-out document (the
    label-free score: does the k-dim embedding find the same neighbours?), one value per held-out document."""
    held = set(held_ids)
    others = [d for d in cache.corpus_ids if d not in held]
    return neighbour_recall_per_probe(lambda x, k: encode(torch.as_tensor(x))[:, :k], cache, dims,
                                      exclude_ids=others, n_probe=len(held))
