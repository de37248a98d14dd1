"""A synthetic embedding cache of any size, written chunk by chunk into a memory-mapped .npy.

Random unit vectors: the figures measured on it (throughput, memory, search time, index bytes) depend on
the sizes, not on what the vectors mean. Each query is a noisy copy of one document, its only positive.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from smec_hf.data import EmbeddingCache

CHUNK_ROWS = 65536


def write_synthetic_cache(path: Path, n_docs: int, dim: int, n_queries: int, seed: int = 0
                          ) -> tuple[EmbeddingCache, dict[str, dict[str, int]]]:
    """Write ``path`` as an :class:`EmbeddingCache` folder without ever holding the corpus in memory."""
    path.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    corpus = np.lib.format.open_memmap(path / "corpus.npy", mode="w+", dtype=np.float32, shape=(n_docs, dim))
    for start in range(0, n_docs, CHUNK_ROWS):
        rows = min(CHUNK_ROWS, n_docs - start)
        corpus[start:start + rows] = F.normalize(torch.randn(rows, dim, generator=generator), dim=1).numpy()
    corpus.flush()
    positives = torch.randperm(n_docs, generator=generator)[:n_queries].sort().values
    source = torch.from_numpy(np.asarray(corpus[positives.numpy()]))
    queries = F.normalize(source + 0.5 * torch.randn(n_queries, dim, generator=generator) / dim**0.5, dim=1)
    np.save(path / "queries.npy", queries.numpy())
    del corpus
    doc_ids = [f"d{i}" for i in range(n_docs)]
    query_ids = [f"q{i}" for i in range(n_queries)]
    (path / "ids.json").write_text(json.dumps({"corpus": doc_ids, "queries": query_ids}))
    (path / "meta.json").write_text(json.dumps({"dim": dim, "key": f"synthetic-{n_docs}x{dim}-{seed}",
                                                "encoder": "synthetic (random unit vectors)"}))
    qrels = {q: {doc_ids[int(p)]: 1} for q, p in zip(query_ids, positives)}
    return EmbeddingCache.load(path), qrels
