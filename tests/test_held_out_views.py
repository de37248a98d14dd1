"""Both views of the held-out queries: about documents training saw, and about documents it did not."""
import numpy as np
import pytest

from smec_hf.core.config import FitConfig
from smec_hf.data.cache import EmbeddingCache
from smec_hf.data.examples import split_for
from smec_hf.evaluation.held_out_views import SEEN, UNSEEN, gain_warning, held_out_views, seen_and_unseen

DIMS = [16, 8]


def _case():
    """60 documents; 100 train queries, two per document for the first 40 (so held-out ones mostly share a document
    with a fitted query), one each for the last 20. A query about a shared document is its document's vector
    exactly; a query about a single-query document is noise, so the two views score very differently."""
    rng = np.random.default_rng(0)
    docs = rng.normal(size=(60, 16)).astype(np.float32)
    doc_ids = [f"d{i}" for i in range(60)]
    qrels, queries = {}, []
    for i in range(40):
        for j in range(2):
            qrels[f"q{i}-{j}"] = {f"d{i}": 1}
            queries.append(docs[i])
    for i in range(40, 60):
        qrels[f"q{i}"] = {f"d{i}": 1}
        queries.append(rng.normal(size=16).astype(np.float32))
    cache = EmbeddingCache.from_vectors(doc_ids, docs, list(qrels), np.stack(queries))
    return cache, qrels, FitConfig(held_out_fraction=0.3, seed=0)


def test_views_split_the_held_out_queries_by_what_training_saw():
    cache, qrels, config = _case()
    fit, held = split_for(config, qrels, cache.query_ids)
    views = seen_and_unseen(qrels, config, cache.query_ids)
    assert sorted(views[SEEN] + views[UNSEEN]) == sorted(held) and views[SEEN] and views[UNSEEN]
    fit_docs = {d for q in fit for d in qrels[q]}
    assert all(set(qrels[q]) <= fit_docs for q in views[SEEN])
    assert not any(set(qrels[q]) & fit_docs for q in views[UNSEEN])
    # every unseen query here is a noise query (about a single-query document) or the held-out twin of a held-out one
    scores = held_out_views({"identity": lambda x, k: x[:, :k]}, cache, qrels, config, DIMS)
    assert scores[SEEN]["queries"] == len(views[SEEN]) and scores[UNSEEN]["queries"] == len(views[UNSEEN])
    assert scores[SEEN]["ndcg@10"]["identity"]["16"] == pytest.approx(1.0)     # exact copies of their documents
    assert scores[UNSEEN]["ndcg@10"]["identity"]["16"] < 0.9


def test_grouped_split_has_no_seen_view():
    cache, qrels, _ = _case()
    config = FitConfig(held_out_fraction=0.3, seed=0, group_by="positive")
    views = seen_and_unseen(qrels, config, cache.query_ids)
    assert views[SEEN] == [] and views[UNSEEN]


def _views(ours_unseen, pca_unseen, unseen_n=40):
    return {SEEN: {"queries": 60, "ndcg@10": {"smec": {"16": 0.9, "8": 0.8}, "pca": {"16": 0.7, "8": 0.6}}},
            UNSEEN: {"queries": unseen_n, "ndcg@10": {"smec": ours_unseen, "pca": pca_unseen}}}


def test_the_warning_appears_when_the_gain_is_only_on_seen_documents_and_not_otherwise():
    warning = gain_warning(_views({"16": 0.70, "8": 0.55}, {"16": 0.69, "8": 0.60}), "smec")
    assert warning.startswith("on the 40 held-out queries about documents training never saw, smec is below PCA at "
                              "8 dims") and "--group-by positive" in warning
    assert gain_warning(_views({"16": 0.70, "8": 0.60}, {"16": 0.69, "8": 0.60}), "smec") is None
    too_few = gain_warning(_views({}, {}, unseen_n=1), "smec")
    assert too_few.startswith("only 1 held-out queries ask about documents training did not see") \
        and "--group-by positive" in too_few
