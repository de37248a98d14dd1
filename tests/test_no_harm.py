"""Do no harm: a head worse than PCA on the held-out queries is not what a run ships."""
import json

import numpy as np
import pytest
import torch

from smec_hf.core.pca import fit_pca
from smec_hf.smec.chain import SMECChain
from smec_hf.smec.no_harm import choose_head, describe, reference_chains
from smec_hf.smec.settings import SMECSettings
from smec_hf.smec.trainer import SMECTrainer, TrainerCallback

DIMS = [384, 128, 32]


def _settings(**overrides) -> SMECSettings:
    return SMECSettings(**{**dict(dims=DIMS, max_epochs=2, batch_size=32, memory_size=256, patience=2,
                                  hard_negatives=4, hard_negative_pool=20), **overrides})


class Sabotage(TrainerCallback):
    """Overwrite stage 1 with a random map once it is trained: a head trained to be bad."""

    def on_stage_end(self, stage, chain):
        if stage == 0:
            with torch.no_grad():
                chain.stages[0].fc.weight.copy_(torch.randn(384, 384, generator=torch.Generator().manual_seed(0)))


def test_a_bad_head_is_replaced(scifact_small, scifact_small_cache, tmp_path):
    trainer = SMECTrainer(_settings(), scifact_small_cache, scifact_small.qrels["train"], tmp_path,
                          show_progress_bar=False, callbacks=[Sabotage()])
    shipped = trainer.train()
    choice = trainer.head_choice
    # replaced: PCA beats it by more than noise somewhere, even on this subset's few held-out queries
    assert choice["kept"] != "trained" and choice["below_floor"] and not choice["too_few_queries"]
    for k in DIMS:
        level = choice["levels"][k]
        assert level["shipped"] >= level["pca"] - 1e-6 > level["trained"]
    # what is saved and returned is the shipped head, and it scores what the record says
    saved = SMECChain.load(tmp_path / "head")
    assert torch.allclose(saved.fold()[0], shipped.fold()[0])
    assert trainer.held_out_scores(saved, None, DIMS) == choice["scores"][choice["kept"]]
    logged = [json.loads(line) for line in (tmp_path / "training_log.jsonl").read_text().splitlines()]
    assert logged[-1]["head_choice"]["kept"] == choice["kept"]


def test_off_ships_the_trained_head_even_when_it_is_below_pca(scifact_small, scifact_small_cache, tmp_path):
    trainer = SMECTrainer(_settings(do_no_harm=False), scifact_small_cache, scifact_small.qrels["train"], tmp_path,
                          show_progress_bar=False, callbacks=[Sabotage()])
    chain = trainer.train()
    assert trainer.head_choice is None
    saved = SMECChain.load(tmp_path / "head")
    assert torch.equal(saved.stages[0].fc.weight, chain.stages[0].fc.weight)       # the sabotaged map itself
    weight, _ = fit_pca(scifact_small_cache.corpus).affine()
    pca = reference_chains(saved, (weight, None))["pca"]
    ours, theirs = trainer.held_out_scores(saved, None, DIMS), trainer.held_out_scores(pca, None, DIMS)
    assert all(ours[k] < theirs[k] for k in DIMS)


def test_candidates_order_and_references(scifact_small_cache):
    weight, _ = fit_pca(scifact_small_cache.corpus).affine()
    trained = SMECChain(DIMS)
    trained.set_input_basis(weight)
    with torch.no_grad():
        trained.stages[0].fc.weight.add_(0.01 * torch.randn(384, 384, generator=torch.Generator().manual_seed(1)))
    references = reference_chains(trained, (weight, None))
    x = torch.tensor(scifact_small_cache.corpus[:50])
    assert torch.allclose(references["pca"](x), x @ weight.T, atol=1e-5)
    assert torch.allclose(references["truncation"](x), x, atol=1e-6)

    def prefer(name_scores):     # the same score for each of 20 held-out queries: no noise at all
        return lambda chain: {k: np.full(20, name_scores(chain)) for k in DIMS}

    # a score that prefers the trained map (its distance from PCA): the trained head is kept
    pca_fold = references["pca"].fold()[0]
    kept, record = choose_head(trained, prefer(lambda c: float((c.fold()[0] - pca_fold).norm())), (weight, None))
    assert record["kept"] == "trained" and kept is trained and not record["below_floor"]
    # one that prefers PCA: every trained candidate is below it, and PCA is shipped
    kept, record = choose_head(trained, prefer(lambda c: -float((c.fold()[0] - pca_fold).norm())), (weight, None))
    assert record["kept"] == "pca" and record["below_floor"] == DIMS
    assert torch.allclose(kept.fold()[0], pca_fold)


def _choose(per_name: dict, monkeypatch, strict: bool = False):
    """choose_head with scripted per-query scores for trained / blends / pca / truncation."""
    weight = torch.linalg.qr(torch.randn(384, 384, generator=torch.Generator().manual_seed(2)))[0]
    trained = SMECChain(DIMS)
    trained.set_input_basis(weight)
    import smec_hf.smec.no_harm as no_harm

    real_references, real_shrunk = no_harm.reference_chains, SMECChain.shrunk_towards_start

    def references(chain, basis):
        refs = real_references(chain, basis)
        for name, ref in refs.items():
            ref.name_for_test = name
        return refs

    def shrunk(self, share):
        blend = real_shrunk(self, share)
        blend.name_for_test = f"blend {share}"
        return blend

    monkeypatch.setattr(no_harm, "reference_chains", references)
    monkeypatch.setattr(SMECChain, "shrunk_towards_start", shrunk)
    scores = {name: {k: np.asarray(v, dtype=float) for k, v in by_level.items()} for name, by_level in per_name.items()}
    for name in ("blend 0.75", "blend 0.5", "blend 0.25"):
        scores.setdefault(name, scores["trained"])
    return choose_head(trained, lambda c: scores[getattr(c, "name_for_test", "trained")], (weight, None), strict)


def test_tiny_held_out_set_keeps_the_trained_head(monkeypatch):
    """Eight held-out queries where PCA and truncation score a little higher on average: noise, not harm."""
    rng = np.random.default_rng(0)
    trained = {k: rng.uniform(0.3, 0.7, 8) for k in DIMS}
    deltas = np.array([0.2, -0.1, 0.15, -0.05, 0.1, 0.0, -0.1, 0.05])     # +0.031 on average
    higher = {k: v + deltas for k, v in trained.items()}
    _, record = _choose({"trained": trained, "pca": higher, "truncation": higher}, monkeypatch)
    assert record["kept"] == "trained" and not record["below_floor"]
    assert "shipped: the trained SMEC head" in describe(record)[0]


def test_too_few_queries_to_tell_keeps_the_trained_head_and_says_so(monkeypatch):
    trained = {k: np.array([0.2, 0.3, 0.1]) for k in DIMS}
    pca = {k: np.array([1.0, 1.0, 1.0]) for k in DIMS}
    _, record = _choose({"trained": trained, "pca": pca, "truncation": pca}, monkeypatch)
    assert record["kept"] == "trained" and record["too_few_queries"]
    assert describe(record)[0].startswith("only 3 held-out queries: too few to tell")


def test_truncation_is_never_shipped_below_pca(monkeypatch):
    """A clearly bad head; truncation has the best mean but is below PCA at one size: PCA ships, and says so."""
    n = 40
    pca = {384: np.full(n, 0.8), 128: np.full(n, 0.7), 32: np.full(n, 0.5)}
    truncation = {384: np.full(n, 0.9), 128: np.full(n, 0.9), 32: np.full(n, 0.49)}
    trained = {k: np.full(n, 0.1) for k in DIMS}
    shipped, record = _choose({"trained": trained, "pca": pca, "truncation": truncation}, monkeypatch)
    assert record["kept"] == "pca" and record["below_floor"] == DIMS
    assert "the encoder's PCA rotation (no trained level beat PCA" in describe(record)[0]


def test_a_larger_level_below_a_smaller_one_is_reported(monkeypatch):
    rng = np.random.default_rng(1)
    base = rng.uniform(0.3, 0.7, 60)
    trained = {384: base, 128: base + 0.1, 32: base + 0.05}    # 128 clearly above 384; 32 below 128
    _, record = _choose({"trained": trained, "pca": {k: base - 0.05 for k in DIMS},
                         "truncation": {k: base - 0.1 for k in DIMS}}, monkeypatch)
    assert record["kept"] == "trained" and record["out_of_order"] == [[384, 128]]
    notes = describe(record)
    assert len(notes) == 2 and notes[1].startswith("the shipped 384-d level scores below its own 128-d level")
    ordered = {k: base + 0.01 * i for i, k in enumerate(DIMS[::-1])}
    _, record = _choose({"trained": ordered, "pca": ordered, "truncation": ordered}, monkeypatch)
    assert record["out_of_order"] == [] and len(describe(record)) == 1


def test_grouped_held_out_queries_hold_the_floor_by_the_means(monkeypatch):
    """With queries grouped by document or topic, a head below PCA within noise is still replaced; with too few of
    them, nothing is told and the trained head stays."""
    rng = np.random.default_rng(3)
    pca = {k: rng.uniform(0.3, 0.7, 40) for k in DIMS}
    wobble = rng.normal(0, 0.2, 40)
    trained = {k: v + wobble - wobble.mean() - 0.004 for k, v in pca.items()}      # 0.004 below: noise
    kwargs = {"trained": trained, "pca": pca, "truncation": {k: v - 0.1 for k, v in pca.items()}}
    _, record = _choose(kwargs, monkeypatch)
    assert record["kept"] == "trained" and not record["strict"]
    _, record = _choose(kwargs, monkeypatch, strict=True)
    assert record["kept"] == "pca" and record["below_floor"] == DIMS and record["strict"]
    assert describe(record)[0].startswith("the trained head scored below PCA on the held-out queries at 384")
    few = {name: {k: v[:20] for k, v in by_level.items()} for name, by_level in kwargs.items()}
    _, record = _choose(few, monkeypatch, strict=True)
    assert record["kept"] == "trained" and record["too_few_queries"]


def test_a_bad_head_is_replaced_without_labels(scifact_small_cache, tmp_path):
    """Corpus only: do no harm pairs the held-out documents' neighbour recall, one value per document."""
    trainer = SMECTrainer(_settings(), scifact_small_cache, {}, tmp_path, show_progress_bar=False,
                          callbacks=[Sabotage()])
    trainer.train()
    choice = trainer.head_choice
    assert choice["kept"] != "trained" and choice["below_floor"] and not choice["too_few_queries"]
    assert choice["queries"] == len(trainer.examples.held_ids) > 1
