"""The SMRL trainer on a real SciFact subset embedded by the real MiniLM."""
import json

import pytest
import torch

from smec_hf.core.pca import fit_pca
from smec_hf.data.examples import TrainingExamples
from smec_hf.engine.ema import WeightAverage
from smec_hf.smec.chain import SMECChain, SMRLStage
from smec_hf.smec.objective import held_out_loss
from smec_hf.smec.settings import SMECSettings
from smec_hf.smec.trainer import SMECTrainer, TrainerCallback

DIMS = [384, 128, 32]


def _config(**overrides) -> SMECSettings:
    # these tests check what training does with fixed settings, so the chain is the trained one (the search and the
    # shipped head: tests/test_selection.py, tests/test_no_harm.py)
    values = dict(dims=DIMS, max_epochs=3, batch_size=32, memory_size=256, patience=3, hard_negatives=4,
                  hard_negative_pool=20, seed=0, do_no_harm=False, search=())
    values.update(overrides)
    return SMECSettings(**values)


@pytest.fixture(scope="module")
def trained(scifact_small, scifact_small_cache, tmp_path_factory):
    """One short real run; also snapshots each stage's weights at the moment it is frozen."""
    out = tmp_path_factory.mktemp("run")
    snapshots = {}

    class Snapshot(TrainerCallback):
        def on_stage_end(self, stage, chain):
            snapshots[stage] = {k: v.clone() for k, v in chain.stages[stage].state_dict().items()}

    # the ungrouped split: held-out queries share documents with fitted ones, so held-out losses measure the fit
    trainer = SMECTrainer(_config(group_by="query"), scifact_small_cache, scifact_small.qrels["train"], out,
                          show_progress_bar=False, callbacks=[Snapshot()])
    chain = trainer.train()
    trainer.snapshots = snapshots
    return trainer, chain, out


def test_training_lowers_the_held_out_loss(trained):
    trainer, chain, _ = trained
    untrained = SMECChain(DIMS).eval()   # identity start: the frozen embeddings
    held, settings = trainer.examples.held, trainer.settings
    for s, levels in ((1, (384, 128)), (2, (128, 32))):
        assert held_out_loss(chain, s, levels, held, settings) < held_out_loss(untrained, s, levels, held, settings)


def test_an_earlier_stage_is_bit_identical_after_later_stages_train(trained):
    trainer, chain, _ = trained
    assert set(trainer.snapshots) == {0, 1}
    for name, tensor in trainer.snapshots[0].items():
        assert torch.equal(tensor, chain.stages[0].state_dict()[name]), name
    assert not any(p.requires_grad for p in chain.parameters())


def test_log_records_losses_gradient_split_and_held_out_scores(trained):
    _, _, out = trained
    records = [json.loads(line) for line in (out / "training_log.jsonl").read_text().splitlines()]
    starts = [r for r in records if r.get("start")]                 # each stage's start, scored before training
    assert [r["stage"] for r in starts] == [0, 1]
    assert all(set(r["held_out_ndcg@10"]) == {str(k) for k in r["levels"]} for r in starts)
    epochs = [r for r in records if "epoch" in r]
    assert {r["stage"] for r in epochs} == {0, 1}
    assert all(r["grad_kept"] > 0 and r["grad_dropped"] >= 0 for r in epochs)
    assert all(set(r["held_out_ndcg@10"]) == {str(k) for k in r["levels"]} for r in epochs)
    assert all(0 < v <= 1 for r in epochs for v in r["held_out_ndcg@10"].values())
    assert all(r["held_out_loss"] > 0 for r in epochs)
    assert any(r["unsup"] > 0 for r in epochs)          # S-XBM contributed once the memory filled
    done = [r for r in records if r.get("done")]
    assert len(done) == 2 and all(len(r["selected"]) == r["levels"][1] for r in done)


def test_stage_one_works_in_the_corpus_pca_basis(trained, scifact_small_cache):
    _, chain, _ = trained
    pca = fit_pca(scifact_small_cache.corpus)
    assert torch.allclose(chain.basis_weight, torch.as_tensor(pca.components), atol=1e-6)


@pytest.mark.parametrize("lookahead", [0.0, 0.5])
def test_lookahead_adds_the_smaller_levels_to_a_stage_loss(scifact_small, scifact_small_cache, tmp_path, monkeypatch,
                                                          lookahead):
    """Stage 1 (384 -> 128) ranks at 32 as well exactly when lookahead_weight > 0."""
    import smec_hf.smec.objective as objective

    widths, current = set(), {}
    loss = objective.graded_ranking_loss

    def recording_loss(q, d, labels, scale=1.0):
        if torch.is_grad_enabled():                      # training steps only, not held-out scoring
            widths.add((current["stage"], q.shape[1]))
        return loss(q, d, labels, scale)

    class StageOf(TrainerCallback):
        def on_stage_start(self, stage, chain):
            current["stage"] = stage

    monkeypatch.setattr(objective, "graded_ranking_loss", recording_loss)
    config = _config(max_epochs=1, use_sxbm=False, lookahead_weight=lookahead)
    SMECTrainer(config, scifact_small_cache, scifact_small.qrels["train"], tmp_path, show_progress_bar=False,
                callbacks=[StageOf()]).train()
    assert {(0, 384), (0, 128), (1, 128), (1, 32)} <= widths
    assert ((0, 32) in widths) == (lookahead > 0)


def test_trained_head_is_saved_and_reloads(trained):
    _, chain, out = trained
    x = torch.randn(4, 384)
    assert torch.equal(SMECChain.load(out / "head")(x), chain(x))


@pytest.mark.parametrize("ema_decay", [0.0, 0.9])   # 0.9: the weight average is checkpointed and restored too
def test_resume_after_interruption_continues_from_the_checkpoint(scifact_small, scifact_small_cache, tmp_path,
                                                               trained, ema_decay):
    config = _config(ema_decay=ema_decay, group_by="query")     # the `trained` fixture's split
    if ema_decay:
        reference = SMECTrainer(config, scifact_small_cache, scifact_small.qrels["train"], tmp_path / "reference",
                                show_progress_bar=False).train()
    else:
        _, reference, _ = trained
    class Interrupt(TrainerCallback):
        def on_record(self, record):
            if record.get("stage") == 1 and record.get("epoch") == 1:   # after epoch 0 was checkpointed
                raise KeyboardInterrupt

    run = tmp_path / "run"
    trainer = SMECTrainer(config, scifact_small_cache, scifact_small.qrels["train"], run, show_progress_bar=False,
                          callbacks=[Interrupt()])
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    checkpoint = trainer.checkpoints.latest()
    assert checkpoint is not None and checkpoint.name == "stage1-epoch000"

    resumed = SMECTrainer(config, scifact_small_cache, scifact_small.qrels["train"], run,
                          show_progress_bar=False).train()
    records = [json.loads(line) for line in (run / "training_log.jsonl").read_text().splitlines()]
    stage0_epochs = [r["epoch"] for r in records if r.get("stage") == 0 and "epoch" in r]
    assert stage0_epochs == sorted(set(stage0_epochs))          # stage 0 was not trained again
    x = torch.randn(16, 384)
    assert torch.allclose(resumed(x), reference(x), atol=1e-5)   # same result as the uninterrupted run


def test_resuming_with_other_settings_is_refused(scifact_small, scifact_small_cache, trained):
    _, _, out = trained
    with pytest.raises(ValueError, match=r"other settings \(--lr 0.003 there, 0.5 here\)"):
        SMECTrainer(_config(lr=0.5, group_by="query"), scifact_small_cache, scifact_small.qrels["train"], out,
                    show_progress_bar=False).train()


def test_weight_average_is_an_ema_that_swaps_in_and_out():
    stage = SMRLStage(8, 4, "orthogonal", use_ads=True)
    stage.requires_grad_(True)
    average = WeightAverage(stage, decay=0.5)
    start = {name: p.detach().clone() for name, p in stage.named_parameters()}
    with torch.no_grad():
        for p in stage.parameters():
            p.add_(1.0)
    average.update()
    live_weight = stage.fc.weight.detach().clone()
    with average.swapped():
        for name, p in stage.named_parameters():
            assert torch.allclose(p, start[name] + 0.5)        # halfway between the start and the step
        weight = stage.fc.weight
        assert torch.allclose(weight @ weight.T, torch.eye(8), atol=1e-5)   # the averaged map is still orthogonal
    assert torch.equal(stage.fc.weight, live_weight)             # the live weights are back
    restored = WeightAverage(stage, decay=0.5)
    restored.load_state_dict(average.state_dict())
    assert all(torch.equal(restored.shadow[n], average.shadow[n]) for n in average.shadow)


def test_a_stage_that_never_beats_its_start_keeps_it(scifact_small, scifact_small_cache, tmp_path):
    """Early stopping scores the start too: with a learning rate that wrecks the FC layer, stage 1 keeps the
    identity (the PCA start) rather than its least bad trained epoch."""
    config = _config(dims=[384, 128], lr=50.0, max_epochs=2, patience=2)
    chain = SMECTrainer(config, scifact_small_cache, scifact_small.qrels["train"], tmp_path,
                        show_progress_bar=False).train()
    assert torch.equal(chain.stages[0].fc.weight, torch.eye(384))
    assert chain.stages[0].fc.bias is None and not chain.basis_bias.any()     # bias-free by default
    done = [json.loads(line) for line in (tmp_path / "training_log.jsonl").read_text().splitlines()][-1]
    assert done["done"] and done["best_epoch"] == -1
    # with evaluation off (eval_every beyond max_epochs, as the throughput benchmark runs) nothing is scored:
    # the stage keeps its last epoch, not an unscored start
    unscored = SMECTrainer(_config(dims=[384, 128], max_epochs=2, eval_every=3), scifact_small_cache,
                           scifact_small.qrels["train"], tmp_path / "no_eval", show_progress_bar=False).train()
    assert not torch.equal(unscored.stages[0].fc.weight, torch.eye(384))


def test_head_bias_trains_the_affine_ablation_in_the_centred_basis(scifact_small, scifact_small_cache, tmp_path):
    chain = SMECTrainer(_config(dims=[384, 128], max_epochs=1, head_bias=True), scifact_small_cache,
                        scifact_small.qrels["train"], tmp_path, show_progress_bar=False).train()
    assert chain.bias and chain.stages[0].fc.bias is not None and chain.basis_bias.abs().sum() > 0
    assert SMECChain.load(tmp_path / "head").bias


def test_training_warnings_name_too_few_held_out_queries_and_stages_that_kept_their_start(scifact_small,
                                                                                        scifact_small_cache):
    from smec_hf.pipelines.train import training_warnings

    stages = [{"levels": [384, 128], "best_epoch": 3}, {"levels": [128, 32], "best_epoch": -1}]
    known = scifact_small_cache.query_ids
    settings = SMECSettings()
    held = len(TrainingExamples.for_config(scifact_small_cache, scifact_small.qrels["train"], settings).held.query_ids)
    notes = training_warnings(stages, scifact_small, settings, known)
    assert held < 30 and any(f"only {held} held-out train queries" in n for n in notes)
    assert any("stages 128->32 kept their untrained start" in n for n in notes)
    assert training_warnings(stages[:1], scifact_small, SMECSettings(held_out_fraction=0.5), known) == []
