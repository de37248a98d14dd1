"""Early-stopping scores: nDCG@10 of held-out *train* queries (never test), or, with no labels at all, the neighbour
recall@10 of held-out corpus documents."""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from ..core.retrieval import neighbour_recall_per_probe, retrieval_per_query, rows_as_tensor
from ..core.types import Embeddings
from ..data.examples import TrainingExamples


@torch.no_grad()
def held_out_ndcg_per_query(examples: TrainingExamples, encode: Callable[[torch.Tensor], torch.Tensor],
                            dims: Sequence[int], chunk_size: int = 65536) -> dict[int, np.ndarray]:
    """Held-out nDCG@10 of every held-out query (in ``examples.held.query_ids`` order) at each of ``dims``, for a
    nested method whose k-dim output is the prefix of ``encode``'s: what the noise-aware decisions pair up.

    The corpus is encoded once for all ``dims``, in chunks (the cache may be a memmap).
    """
    corpus = examples.cache.corpus
    docs = torch.cat([encode(rows_as_tensor(corpus, slice(s, s + chunk_size))) for s in range(0, len(corpus), chunk_size)])
    queries = encode(examples.held.queries)
    ids = examples.held.query_ids
    by_dim = {k: retrieval_per_query(ids, queries[:, :k], examples.cache.corpus_ids, docs[:, :k], examples.qrels)
              for k in dims}
    return {k: np.array([scores[q] for q in ids]) for k, scores in by_dim.items()}


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
