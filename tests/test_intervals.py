"""Paired intervals: exact zero for a method against itself, nominal coverage on simulated per-query scores, a
t-interval over seeds that matches scipy's, and the reference-vs-others table."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from smec_hf.evaluation.intervals import compare_to_reference, comparison_markdown, paired_bootstrap, seed_interval


def simulated(rng: np.random.Generator, n: int = 300, diff: float = 0.02, noise: float = 0.1):
    """Per-query scores of B and of A = B + ``diff`` + noise: the population mean difference is ``diff``."""
    b = rng.uniform(0.0, 1.0, n)
    a = b + diff + rng.normal(0.0, noise, n)
    ids = [f"q{i}" for i in range(n)]
    return dict(zip(ids, a.tolist())), dict(zip(ids, b.tolist()))


def test_method_against_itself_is_exactly_zero():
    a, _ = simulated(np.random.default_rng(0))
    interval = paired_bootstrap(a, a)
    assert (interval.mean_diff, interval.low, interval.high, interval.significant) == (0.0, 0.0, 0.0, False)


def test_bootstrap_covers_the_true_difference_about_95_percent():
    rng = np.random.default_rng(1)
    draws = [paired_bootstrap(*simulated(rng), n_resamples=1000, seed=i) for i in range(200)]
    coverage = np.mean([d.low <= 0.02 <= d.high for d in draws])
    assert 0.90 <= coverage <= 0.99, coverage
    # 0.02 with noise 0.1 over 300 queries is about 3.5 standard errors: nearly always significant, positive
    assert np.mean([d.significant and d.low > 0 for d in draws]) > 0.8
    assert all(d.low < d.mean_diff < d.high for d in draws)


def test_bootstrap_is_seeded_and_symmetric():
    a, b = simulated(np.random.default_rng(2))
    assert paired_bootstrap(a, b, seed=3) == paired_bootstrap(a, b, seed=3)
    forward, backward = paired_bootstrap(a, b), paired_bootstrap(b, a)
    assert backward.mean_diff == pytest.approx(-forward.mean_diff)
    assert (backward.low, backward.high) == pytest.approx((-forward.high, -forward.low))


def test_mismatched_queries_and_bad_arguments_raise():
    a, b = simulated(np.random.default_rng(3), n=10)
    with pytest.raises(ValueError, match="same queries.*1 only in a"):
        paired_bootstrap(a, {q: s for q, s in b.items() if q != "q0"})
    with pytest.raises(ValueError, match="confidence"):
        paired_bootstrap(a, b, confidence=95)
    with pytest.raises(ValueError, match="no queries"):
        paired_bootstrap({}, {})
    with pytest.raises(ValueError, match="at least 2"):
        seed_interval([0.01])


def test_seed_interval_is_the_t_interval():
    diffs = [0.012, -0.004, 0.020, 0.008, 0.015]
    interval = seed_interval(diffs, confidence=0.9)
    low, high = stats.t.interval(0.9, len(diffs) - 1, loc=np.mean(diffs), scale=stats.sem(diffs))
    assert (interval.low, interval.high) == pytest.approx((low, high))
    assert interval.significant == (low > 0)
    assert seed_interval([0.01, 0.01, 0.01]).as_dict() == {"diff": 0.01, "low": 0.01, "high": 0.01,
                                                         "significant": True}


def test_reference_table_and_markdown():
    rng = np.random.default_rng(4)
    better, base = simulated(rng, diff=0.05)
    per_query = {"smec": {64: better, 32: base}, "pca": {64: base, 32: base}, "truncation": {"64": base, "32": better}}
    table = compare_to_reference(per_query, "smec", n_resamples=500)
    assert set(table) == {"pca", "truncation"} and set(table["pca"]) == {"64", "32"}
    assert table["pca"]["64"]["significant"] and table["pca"]["64"]["low"] > 0
    assert table["pca"]["32"] == {"diff": 0.0, "low": 0.0, "high": 0.0, "significant": False}
    assert table["truncation"]["32"]["significant"] and table["truncation"]["32"]["high"] < 0
    markdown = comparison_markdown(table, "smec")
    rows = [line for line in markdown.splitlines() if line.startswith("| pca")]
    assert rows and rows[0].count("*") == 1 and "+0.0000 [+0.0000, +0.0000] |" in rows[0]
    with pytest.raises(ValueError, match="dims \\['32'\\]"):
        compare_to_reference({"smec": {64: better, 32: base}, "pca": {64: base}})
    with pytest.raises(ValueError, match="reference method 'smec'"):
        compare_to_reference({"pca": {64: base}})
