"""Every train query's frozen top documents, mined once and shared.

SMEC, its search candidates, every supervised baseline and every Accelerate process draw hard negatives and
held-out candidate sets from the same frozen ranking, so it is computed once (:func:`~smec_hf.core.search.frozen_top_k`)
and saved beside the embedding cache as a memory-mapped ``.npy``; a file lock makes concurrent processes mine it
once, the others wait and map the same file. A cache without a folder (vectors wrapped in memory) mines in memory.
"""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import numpy as np
from filelock import FileLock

from ..core.search import frozen_top_k
from ..core.types import Embeddings

logger = logging.getLogger(__name__)

MINED_DIR = "mined"


def mined_rows(cache: Embeddings, query_rows: np.ndarray, depth: int, exact_max_docs: int) -> np.ndarray:
    """``[len(query_rows), depth]`` corpus rows nearest each of the cache's ``query_rows`` (best first; -1 where an
    approximate index found fewer), from the saved file when an earlier method or process mined them."""
    query_rows = np.asarray(query_rows, dtype=np.int64)
    exact = len(cache.corpus) <= exact_max_docs
    folder, key = getattr(cache, "path", None), cache.meta.get("key")
    if folder is None or key is None or not os.access(folder, os.W_OK):
        return _mine(cache, query_rows, depth, exact_max_docs)
    digest = hashlib.sha256(f"{key}\0{depth}\0{'exact' if exact else 'ivf'}\0".encode() + query_rows.tobytes())
    path = Path(folder) / MINED_DIR / f"{digest.hexdigest()[:24]}.npy"
    path.parent.mkdir(exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if not path.exists():
            tmp = path.with_suffix(".tmp.npy")
            np.save(tmp, _mine(cache, query_rows, depth, exact_max_docs))
            tmp.replace(path)
    return np.load(path, mmap_mode="r")


def _mine(cache: Embeddings, query_rows: np.ndarray, depth: int, exact_max_docs: int) -> np.ndarray:
    exact = len(cache.corpus) <= exact_max_docs
    logger.info("mining the frozen top %d of %d queries over %d documents (%s)", depth, len(query_rows),
                len(cache.corpus), "exact" if exact else "FAISS IVF")
    return frozen_top_k(np.asarray(cache.queries[query_rows]), cache.corpus, depth, exact_max_docs)
