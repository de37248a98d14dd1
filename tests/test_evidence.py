"""Noise-aware decisions: the paired test, and the loop keeping its trained epoch unless the start clearly wins."""
import numpy as np
import pytest
import torch
from torch import nn

from smec_hf.engine.evidence import MIN_QUERIES, clearly_above, paired_difference
from smec_hf.engine.loop import PER_QUERY, Schedule, fit_early_stopped


def test_paired_difference_margin_shrinks_with_more_queries():
    rng = np.random.default_rng(0)
    base = rng.uniform(0, 1, 400)
    noise = rng.normal(0.02, 0.1, 400)
    few, many = paired_difference(base[:20] + noise[:20], base[:20]), paired_difference(base + noise, base)
    assert few.margin > many.margin > 0
    assert not few.clear and many.clear               # +0.02 is noise on 20 queries, evidence on 400
    assert clearly_above(base + 0.1, base) and not clearly_above(base, base)
    assert not clearly_above(np.ones(MIN_QUERIES - 1), np.zeros(MIN_QUERIES - 1))   # too few to tell anything
    with pytest.raises(ValueError, match="equal-length"):
        paired_difference([1.0, 2.0], [1.0])


def _run(start, epochs):
    """The loop on a one-weight model whose score is scripted: start, then one per-query vector per epoch."""
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(-1.0)                    # the start's weight; epoch e sets it to e
    scripted = iter([start, *epochs])

    def train_epoch(epoch):
        with torch.no_grad():
            model.weight.fill_(float(epoch))
        return {"loss": 0.0}

    def score():
        per_query = np.asarray(next(scripted), dtype=float)
        return float(per_query.mean()), {PER_QUERY: per_query}

    state = fit_early_stopped(model, train_epoch, score, Schedule(max_epochs=len(epochs), patience=10),
                              show_progress_bar=False)
    return state, float(model.weight.detach())


def test_the_loop_keeps_its_best_trained_epoch_unless_the_start_clearly_wins():
    rng = np.random.default_rng(1)
    start = rng.uniform(0.3, 0.8, 60)
    wobble = rng.normal(0, 0.1, 60)
    within_noise = [start + wobble - wobble.mean() - 0.004, start + wobble - wobble.mean() - 0.002]
    state, weight = _run(start, within_noise)
    assert state.best_epoch == 1 and weight == 1.0 and state.start_kept_over is None
    assert state.best_per_query == pytest.approx(list(within_noise[1]))
    clearly_worse = [start - 0.2, start - 0.1]
    state, weight = _run(start, clearly_worse)
    assert state.best_epoch == -1 and weight == -1.0 and state.start_kept_over == 1
    assert state.best_score == pytest.approx(start.mean())
