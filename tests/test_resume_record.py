"""A run interrupted and resumed reports each stage once, and its timings count every attempt."""
import json
import logging

import pytest

from smec_hf.pipelines.train import ATTEMPT, train_on_cache
from smec_hf.smec.settings import SMECSettings
from smec_hf.smec.trainer import SMECTrainer

SETTINGS = SMECSettings(dims=[384, 128, 32], max_epochs=2, batch_size=32, memory_size=256, patience=2,
                        hard_negatives=4, hard_negative_pool=20, search=("sxbm_x10",))


def test_an_interrupted_search_resumes_to_one_record_per_stage(scifact_small, scifact_small_cache, tmp_path,
                                                              monkeypatch, caplog):
    straight = train_on_cache(scifact_small_cache, scifact_small, tmp_path / "straight", SETTINGS, "minilm",
                              show_progress_bar=False)
    real = SMECTrainer._train_stage
    calls = []

    def interrupt_stage_2_search(self, chain, memory, s, loop, checkpoint, settings=None, candidate=None):
        calls.append((s, candidate))
        if (s, candidate) == (1, "sxbm_x10") and calls.count((1, "sxbm_x10")) == 1:
            raise KeyboardInterrupt      # Ctrl-C after stage 2's first candidate finished and logged
        return real(self, chain, memory, s, loop, checkpoint, settings, candidate)

    monkeypatch.setattr(SMECTrainer, "_train_stage", interrupt_stage_2_search)
    out = tmp_path / "interrupted"
    with pytest.raises(KeyboardInterrupt):
        train_on_cache(scifact_small_cache, scifact_small, out, SETTINGS, "minilm", show_progress_bar=False)
    resumed = train_on_cache(scifact_small_cache, scifact_small, out, SETTINGS, "minilm", show_progress_bar=False)

    assert [st["stage"] for st in resumed["stages"]] == [st["stage"] for st in straight["stages"]] == [1, 2]
    assert [st["levels"] for st in resumed["stages"]] == [[384, 128], [128, 32]]
    for ours, theirs in zip(resumed["stages"], straight["stages"]):   # the same decisions and scores as straight
        assert ours["chosen"] == theirs["chosen"] and ours["epochs_run"] == theirs["epochs_run"]
        assert ours["held_out_ndcg@10"] == pytest.approx(theirs["held_out_ndcg@10"], abs=1e-6)
    attempts = [json.loads(line)[ATTEMPT] for line in (out / "training_log.jsonl").read_text().splitlines()
                if ATTEMPT in line]
    assert len(attempts) == 2 and "evaluate" not in attempts[0]     # the interrupted attempt, then the finished one
    assert resumed["timings_s"]["train"] == pytest.approx(attempts[0]["train"] + attempts[1]["train"])
    # the first attempt trained all of stage 1: the sum covers at least that part of the uninterrupted run
    assert resumed["timings_s"]["train"] >= straight["stages"][0]["seconds"]

    caplog.clear()
    with caplog.at_level(logging.WARNING):
        again = train_on_cache(scifact_small_cache, scifact_small, out, SETTINGS, "minilm", show_progress_bar=False)
    assert "all 2 stages were already trained" in caplog.text and "resuming" not in caplog.text
    assert [st["stage"] for st in again["stages"]] == [1, 2]
    assert again["timings_s"]["train"] >= resumed["timings_s"]["train"]
