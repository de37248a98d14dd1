"""Do no harm: a head worse than PCA on the held-out queries is not what a run ships."""
import json

import torch

from smec_hf.core.pca import fit_pca
from smec_hf.smec.chain import SMECChain
from smec_hf.smec.no_harm import choose_head, reference_chains
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
    assert choice["kept"] != "trained" and choice["below_floor"] == DIMS
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

    def prefer(name_scores):
        return lambda chain: {k: name_scores(chain) for k in DIMS}

    # a score that prefers the trained map (its distance from PCA): the trained head is kept
    pca_fold = references["pca"].fold()[0]
    kept, record = choose_head(trained, prefer(lambda c: float((c.fold()[0] - pca_fold).norm())), (weight, None))
    assert record["kept"] == "trained" and kept is trained and not record["below_floor"]
    # one that prefers PCA: every trained candidate is below it, and PCA is shipped
    kept, record = choose_head(trained, prefer(lambda c: -float((c.fold()[0] - pca_fold).norm())), (weight, None))
    assert record["kept"] == "pca" and record["below_floor"] == DIMS
    assert torch.allclose(kept.fold()[0], pca_fold)
