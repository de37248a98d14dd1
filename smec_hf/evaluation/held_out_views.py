"""Both views of the held-out queries: those about documents training saw, and those about documents it did not.

The default held-out split draws queries like the training ones (new queries over the same corpus), so most of
them ask about a document some fitted query was trained towards (SciFact: about two thirds). A head can gain there
only by learning those documents, and lose on new ones; scoring the two groups apart, each beside PCA, says which
one a run's gain comes from, without holding out more queries.
"""
from __future__ import annotations

from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

from ..core.config import FitConfig
from ..core.retrieval import per_query_ndcg_by_dim
from ..core.types import Embeddings, Qrels
from ..data.examples import split_for

SEEN, UNSEEN = "seen", "unseen"
MIN_VIEW_QUERIES = 20   # fewer unseen queries than this cannot tell: one of them moves their mean by over 0.05
TOLERANCE = 1e-6
Transform = Callable[[np.ndarray, int], np.ndarray]


def seen_and_unseen(train_qrels: Qrels, config: FitConfig, known: Iterable[str]) -> dict[str, list[str]]:
    """The held-out query ids split by whether one of their relevant documents is relevant to a fitted query."""
    fit, held = split_for(config, train_qrels, known)
    seen_docs = {d for q in fit for d, s in train_qrels[q].items() if s > 0}
    views: dict[str, list[str]] = {SEEN: [], UNSEEN: []}
    for q in held:
        views[SEEN if any(s > 0 and d in seen_docs for d, s in train_qrels[q].items()) else UNSEEN].append(q)
    return views


def held_out_views(methods: Mapping[str, Transform], cache: Embeddings, train_qrels: Qrels, config: FitConfig,
                   dims: Sequence[int]) -> dict[str, dict]:
    """``{view: {"queries": n, "ndcg@10": {method: {dim: score}}}}`` for the seen and unseen held-out queries
    (a view without queries has no scores). Each method scores all held-out queries once; the views split them."""
    views = seen_and_unseen(train_qrels, config, cache.query_ids)
    held = {q: train_qrels[q] for ids in views.values() for q in ids}
    per_query = {name: per_query_ndcg_by_dim(transform, cache, held, dims) for name, transform in methods.items()}
    return {view: {"queries": len(ids),
                   "ndcg@10": {name: {str(d): float(np.mean([by_dim[d][q] for q in ids])) for d in dims}
                               for name, by_dim in per_query.items()} if ids else {}}
            for view, ids in views.items()}


def gain_warning(views: Mapping[str, Mapping], method: str, reference: str = "pca") -> str | None:
    """One plain line when the run cannot show that ``method`` holds up on new documents: it is below
    ``reference`` on the held-out queries about unseen documents, or there are too few of those to tell."""
    unseen = views[UNSEEN]
    flag = "train with --group-by positive (or --group-by FIELD for new topics)"
    if unseen["queries"] < MIN_VIEW_QUERIES:
        return (f"only {unseen['queries']} held-out queries ask about documents training did not see: too few to "
                f"tell how the head does on new documents; if your users will query new documents, {flag}")
    ours, floor = unseen["ndcg@10"][method], unseen["ndcg@10"][reference]
    below = [d for d in ours if ours[d] < floor[d] - TOLERANCE]
    if not below:
        return None
    return (f"on the {unseen['queries']} held-out queries about documents training never saw, {method} is below "
            f"{reference.upper()} at {', '.join(below)} dims: its gain comes from documents seen in training; if "
            f"your users will query new documents, {flag}")


def views_markdown(views: Mapping[str, Mapping], dims: Sequence[int]) -> list[str]:
    """The two views as table lines: one row per view and method, ``n`` queries in the row's label."""
    lines = ["| held-out queries about | " + " | ".join(map(str, dims)) + " |", "|---" * (len(dims) + 1) + "|"]
    label = {SEEN: "documents seen in training", UNSEEN: "documents training never saw"}
    for view in (SEEN, UNSEEN):
        for name, by_dim in views[view]["ndcg@10"].items():
            lines.append(f"| {label[view]} ({views[view]['queries']}): {name} | "
                         + " | ".join(f"{by_dim[str(d)]:.4f}" for d in dims) + " |")
        if not views[view]["ndcg@10"]:
            lines.append(f"| {label[view]}: no queries | " + " | ".join("-" for _ in dims) + " |")
    return lines
