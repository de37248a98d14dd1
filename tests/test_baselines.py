"""The baselines on a small real SciFact subset: they fit, transform to the right shapes, beat a random
projection at every dim, and share SMEC's train / held-out division of the train queries."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from smec_hf.baselines.frozen import PCACompressor, TruncationCompressor
from smec_hf.baselines.matryoshka_adaptor import MatryoshkaAdaptorCompressor
from smec_hf.baselines.mrl_joint import MRLJointCompressor
from smec_hf.baselines.search_adaptor import SearchAdaptorCompressor
from smec_hf.core.config import FitConfig
from smec_hf.core.retrieval import ndcg_by_dim
from smec_hf.core.types import Compressor
from smec_hf.data.examples import TrainingExamples
from smec_hf.engine.loop import Schedule
from smec_hf.smec.settings import SMECSettings
from smec_hf.smec.trainer import SMECTrainer

DIMS = [384, 128, 32]
SHORT = Schedule(max_epochs=15, patience=5)


def config(**overrides) -> FitConfig:
    return FitConfig(dims=DIMS, **overrides)


BUILDERS = {
    "truncation": lambda: TruncationCompressor(DIMS),
    "pca": lambda: PCACompressor(DIMS),
    "mrl_joint": lambda: MRLJointCompressor(DIMS, config(), SHORT, show_progress_bar=False),
    "matryoshka_adaptor": lambda: MatryoshkaAdaptorCompressor(DIMS, config(), SHORT, show_progress_bar=False),
    "search_adaptor": lambda: SearchAdaptorCompressor(DIMS, config(), SHORT, show_progress_bar=False),
}


@pytest.fixture(scope="module")
def fitted(scifact_small, scifact_small_cache) -> dict[str, Compressor]:
    return {name: build().fit(scifact_small_cache, scifact_small.qrels["train"]) for name, build in BUILDERS.items()}


def random_projection(vectors: np.ndarray, dim: int) -> np.ndarray:
    """The bar at reduced dims: a seeded Gaussian projection (Johnson-Lindenstrauss, no training)."""
    matrix = np.random.default_rng(0).normal(size=(vectors.shape[1], dim)).astype(np.float32)
    return np.asarray(vectors, dtype=np.float32) @ matrix


def random_vectors(vectors: np.ndarray, dim: int) -> np.ndarray:
    """The bar at every dim: vectors unrelated to the input (a random ranking)."""
    return np.random.default_rng(len(vectors)).normal(size=(len(vectors), dim)).astype(np.float32)


@pytest.mark.parametrize("name", list(BUILDERS))
def test_fits_transforms_and_beats_random(name, fitted, scifact_small, scifact_small_cache):
    method = fitted[name]
    assert isinstance(method, Compressor) and method.name == name and list(method.dims) == DIMS
    sample = np.asarray(scifact_small_cache.queries[:5])
    for dim in DIMS:
        out = method.transform(sample, dim)
        assert out.shape == (5, dim) and out.dtype == np.float32 and np.isfinite(out).all()
    with pytest.raises(ValueError, match="dim=48"):
        method.transform(sample, 48)
    test = scifact_small.qrels["test"]
    scores = ndcg_by_dim(method.transform, scifact_small_cache, test, DIMS)
    chance = ndcg_by_dim(random_vectors, scifact_small_cache, test, DIMS)
    projected = ndcg_by_dim(random_projection, scifact_small_cache, test, DIMS[1:])
    for dim in DIMS:
        assert scores[dim] > chance[dim] + 0.4, (dim, scores[dim], chance[dim])
    for dim in DIMS[1:]:
        assert scores[dim] > projected[dim] + 0.02, (dim, scores[dim], projected[dim])


@pytest.mark.parametrize("name", ["mrl_joint", "matryoshka_adaptor", "search_adaptor"])
def test_supervised_baselines_need_fit(name):
    with pytest.raises(RuntimeError, match="before fit"):
        BUILDERS[name]().transform(np.zeros((1, 384), dtype=np.float32), 32)


def test_same_fit_and_held_out_queries_as_smec(scifact_small, scifact_small_cache, tmp_path):
    cfg = SMECSettings(dims=DIMS)
    setup = TrainingExamples.build(scifact_small_cache, scifact_small.qrels["train"], cfg.held_out_fraction,
                                   cfg.seed, cfg.hard_negative_pool)
    trainer = SMECTrainer(cfg, scifact_small_cache, scifact_small.qrels["train"], tmp_path, show_progress_bar=False)
    ours = trainer.examples
    assert setup.fit.query_ids == ours.fit.query_ids and setup.held.query_ids == ours.held.query_ids
    assert torch.equal(setup.fit.negative_pool, ours.fit.negative_pool)
    assert not set(setup.held.query_ids) & set(scifact_small.qrels["test"])


def test_early_stopping_keeps_the_start_when_training_only_hurts(scifact_small, scifact_small_cache):
    """With a destructive learning rate no epoch beats the PCA start, so the PCA map comes back unchanged."""
    joint = MRLJointCompressor(DIMS, config(), Schedule(max_epochs=3, patience=2), show_progress_bar=False, lr=50.0)
    joint.fit(scifact_small_cache, scifact_small.qrels["train"])
    pca = PCACompressor(DIMS).fit(scifact_small_cache)
    sample = np.asarray(scifact_small_cache.corpus[:20])
    assert joint.log["best_epoch"] == -1
    for dim in DIMS:
        np.testing.assert_allclose(joint.transform(sample, dim), pca.transform(sample, dim), atol=1e-5)


def test_mrl_joint_is_one_nested_linear_map(fitted, scifact_small_cache):
    joint = fitted["mrl_joint"]
    x = np.asarray(scifact_small_cache.corpus[:10])
    full = joint.transform(x, 384)
    for dim in DIMS:
        np.testing.assert_allclose(joint.transform(x, dim), full[:, :dim], atol=1e-6)
    assert joint.log["best_epoch"] >= 0          # training improved on the PCA start on held-out queries


def test_search_adaptor_trains_one_independent_adapter_per_dim(fitted, scifact_small_cache):
    adaptor = fitted["search_adaptor"]
    assert sorted(adaptor.adaptors) == sorted(DIMS) and sorted(adaptor.log) == sorted(DIMS)
    x = np.asarray(scifact_small_cache.corpus[:10])
    # not nested: the 32-d adapter is not a prefix of the 128-d one
    assert not np.allclose(adaptor.transform(x, 32), adaptor.transform(x, 128)[:, :32], atol=1e-4)


def test_matryoshka_adaptor_neighbours_exclude_self(scifact_small_cache):
    method = MatryoshkaAdaptorCompressor(DIMS, config(), top_k=5, max_corpus_rows=200)
    sample = method.corpus_sample(scifact_small_cache)
    corpus, neighbours = sample.vectors, sample.neighbours
    assert corpus.shape == (200, 384) and neighbours.shape == (200, 5)
    assert not (neighbours == torch.arange(200)[:, None]).any()
    assert (neighbours < 200).all() and all(len(set(row.tolist())) == 5 for row in neighbours)


@pytest.mark.parametrize("build, match", [
    (lambda: MatryoshkaAdaptorCompressor(DIMS, alpha=-1.0), "alpha"),
    (lambda: SearchAdaptorCompressor(DIMS, hidden=0), "hidden"),
    (lambda: Schedule(max_epochs=0), "max_epochs"),
])
def test_bad_settings_name_the_argument(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_dims_must_start_at_the_embedding_size(scifact_small, scifact_small_cache):
    with pytest.raises(ValueError, match="embedding dimension 384"):
        MRLJointCompressor([256, 32], FitConfig(dims=[256, 32])).fit(scifact_small_cache,
                                                                     scifact_small.qrels["train"])


def test_pca_components_do_not_depend_on_the_thread_count(scifact_small_cache):
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = PCACompressor([384, 32]).fit(scifact_small_cache).pca.components
        torch.set_num_threads(2)
        two = PCACompressor([384, 32]).fit(scifact_small_cache).pca.components
    finally:
        torch.set_num_threads(threads)
    assert np.allclose(one[:32], two[:32], atol=1e-4)
    assert (one[np.arange(len(one)), np.abs(one).argmax(axis=1)] > 0).all()


@pytest.mark.parametrize("name", ["matryoshka_adaptor", "search_adaptor"])
def test_a_fit_does_not_depend_on_what_ran_before_in_the_process(name, scifact_small, scifact_small_cache):
    """A worker process may train another method first: a baseline's random initialisation is seeded."""
    heads = []
    for draws in (0, 7):
        torch.rand(draws)                          # move torch's global RNG as an earlier fit would
        build = {"matryoshka_adaptor": MatryoshkaAdaptorCompressor, "search_adaptor": SearchAdaptorCompressor}[name]
        heads.append(build(DIMS, config(), Schedule(max_epochs=2, patience=1), show_progress_bar=False)
                     .fit(scifact_small_cache, scifact_small.qrels["train"]))
    x = np.asarray(scifact_small_cache.corpus[:5])
    for dim in DIMS:   # equal up to float rounding (vectorised reductions may round by memory alignment)
        np.testing.assert_allclose(heads[0].transform(x, dim), heads[1].transform(x, dim), rtol=0, atol=1e-6)


def test_neighbour_recall_is_one_for_the_frozen_encoder_and_falls_with_truncation(scifact_small, scifact_small_cache):
    from smec_hf.core.retrieval import neighbour_recall

    positives = {d for docs in scifact_small.qrels["train"].values() for d in docs}
    truncation = neighbour_recall(TruncationCompressor(DIMS).transform, scifact_small_cache, DIMS,
                                  exclude_ids=positives, n_probe=100)
    assert truncation[384] == 1.0 and truncation[384] > truncation[128] > truncation[32] > 0
    shuffled = neighbour_recall(random_vectors, scifact_small_cache, DIMS, n_probe=100)
    assert max(shuffled.values()) < 0.1                 # unrelated vectors find (almost) none of the neighbours
    pca = PCACompressor(DIMS).fit(scifact_small_cache)
    at_32 = neighbour_recall(pca.transform, scifact_small_cache, [32], exclude_ids=positives, n_probe=100)[32]
    assert at_32 > truncation[32]                       # PCA keeps more of MiniLM's geometry than a prefix does
    with pytest.raises(ValueError, match="probe"):
        neighbour_recall(pca.transform, scifact_small_cache, [32], exclude_ids=scifact_small_cache.corpus_ids)
