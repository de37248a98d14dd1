"""Per-stage search: each stage trains once per candidate from the same start; the run's own settings stay unless a
candidate beats them on the held-out queries by more than noise."""
import numpy as np
import pytest
import torch

from smec_hf.engine.loop import LoopState
from smec_hf.pipelines.train import stage_summaries
from smec_hf.smec import selection
from smec_hf.smec.chain import SMECChain
from smec_hf.smec.settings import SMECSettings
from smec_hf.smec import trainer as trainer_module
from smec_hf.smec.trainer import SMECTrainer, TrainerCallback

DIMS = [384, 128, 32]


def _settings(**overrides) -> SMECSettings:
    # the ungrouped split, so that on this small slice training beats its start and a ruined candidate is visible
    return SMECSettings(**{**dict(dims=DIMS, max_epochs=3, batch_size=32, memory_size=256, patience=3,
                                  hard_negatives=4, hard_negative_pool=20, group_by="query", do_no_harm=False),
                           **overrides})


def test_a_bad_candidate_is_not_chosen(scifact_small, scifact_small_cache, tmp_path, monkeypatch):
    # a learning rate that wrecks every step: early stopping keeps its start, below what the defaults reach
    monkeypatch.setitem(selection.CANDIDATES, "ruin", lambda s: {"lr": 50.0, "ads_lr": 50.0})
    trainer = SMECTrainer(_settings(search=("ruin",)), scifact_small_cache, scifact_small.qrels["train"], tmp_path,
                          show_progress_bar=False)
    chain = trainer.train()
    stages = stage_summaries(tmp_path / "training_log.jsonl")
    assert [st["chosen"] for st in stages] == ["defaults", "defaults"]
    for st in stages:
        assert st["candidates"]["defaults"] > st["candidates"]["ruin"]
        assert st["held_out_ndcg@10"] == st["candidates"]["defaults"]     # the summary is the chosen run's
    # the kept chain is the defaults' run, the same as training with the fixed settings
    fixed = SMECTrainer(_settings(search=()), scifact_small_cache, scifact_small.qrels["train"], tmp_path / "fixed",
                        show_progress_bar=False).train()
    assert torch.equal(chain.fold()[0], fixed.fold()[0])


def test_a_stage_without_ads_is_saved_loaded_and_resumed(scifact_small, scifact_small_cache, tmp_path, monkeypatch):
    # the candidate that drops ADS wins every stage (the choice is forced: this is about saving and resuming it)
    monkeypatch.setitem(selection.CANDIDATES, "plain", lambda s: {"use_ads": False, "lr": 3e-3, "ads_lr": 1e-2})
    monkeypatch.setattr(trainer_module, "choose_candidate", lambda trials: ("plain", {}))
    settings = _settings(search=("plain",), lr=50.0, ads_lr=50.0, max_epochs=2)

    class Interrupt(TrainerCallback):
        def on_stage_start(self, stage, chain):
            if stage == 1:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        SMECTrainer(settings, scifact_small_cache, scifact_small.qrels["train"], tmp_path, show_progress_bar=False,
                    callbacks=[Interrupt()]).train()
    # the resumed run rebuilds stage 1 without ADS from the checkpoint, then searches stage 2
    chain = SMECTrainer(settings, scifact_small_cache, scifact_small.qrels["train"], tmp_path,
                        show_progress_bar=False).train()
    assert [st["chosen"] for st in stage_summaries(tmp_path / "training_log.jsonl")] == ["plain", "plain"]
    assert chain.use_ads is False
    loaded = SMECChain.load(tmp_path / "head")
    assert loaded.use_ads is False and torch.equal(loaded.fold()[0], chain.fold()[0])
    mixed = SMECChain(DIMS)
    mixed.drop_ads(1)
    mixed.save(tmp_path / "mixed")
    assert SMECChain.load(tmp_path / "mixed").use_ads == [True, False]


def test_unknown_candidate_is_refused_with_the_list():
    with pytest.raises(ValueError, match="unknown candidates \\['nope'\\]; known: sxbm_x10"):
        SMECSettings(search=("nope",))
    assert list(selection.stage_candidates(SMECSettings(use_ads=False, search=("no_ads", "sxbm_x10")))) == [
        "defaults", "sxbm_x10"]       # no_ads changes nothing in a run without ADS


def _loop(per_query) -> LoopState:
    per_query = [float(v) for v in per_query]
    return LoopState(best_score=float(np.mean(per_query)), best_epoch=3, best_per_query=per_query)


def test_a_candidate_replaces_the_run_settings_only_beyond_noise():
    rng = np.random.default_rng(0)
    own = rng.uniform(0.3, 0.8, 80)
    wobble = rng.normal(0.0, 0.1, 80)
    slightly = own + wobble - wobble.mean() + 0.005            # a higher mean, well within the noise of 80 queries
    clearly, most = own + 0.03, own + 0.05
    chosen, evidence = selection.choose_candidate({"defaults": _loop(own), "a": _loop(slightly)})
    assert chosen == "defaults" and evidence["a"].startswith("+0.0050 (noise margin")
    chosen, _ = selection.choose_candidate({"defaults": _loop(own), "a": _loop(slightly), "b": _loop(clearly),
                                            "c": _loop(most)})
    assert chosen == "c"                                        # of the clear winners, the highest mean
