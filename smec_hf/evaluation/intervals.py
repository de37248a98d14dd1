"""Is method A better than method B, or is it noise? Paired intervals for differences of mean nDCG@10.

Two sources of noise, two intervals: over *queries* (one run; both methods scored on the same test queries, so
the per-query differences are resampled together: a paired percentile bootstrap) and over *seeds* (several
runs; a Student t-interval of the per-seed mean differences). A difference is marked significant when its
interval excludes zero.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
from scipy import stats

_BLOCK_ELEMENTS = 1 << 23          # resample indices drawn per block, bounding memory for large query sets


@dataclass(frozen=True)
class Interval:
    """A mean difference and its confidence interval; ``significant``: the interval excludes 0."""

    mean_diff: float
    low: float
    high: float
    significant: bool

    def as_dict(self) -> dict[str, float | bool]:
        return {"diff": self.mean_diff, "low": self.low, "high": self.high, "significant": self.significant}


def _check_confidence(confidence: float) -> float:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return 1.0 - confidence


def _interval(mean: float, low: float, high: float) -> Interval:
    return Interval(float(mean), float(low), float(high), bool(low > 0.0 or high < 0.0))


def paired_bootstrap(a: Mapping[str, float], b: Mapping[str, float], n_resamples: int = 2000, seed: int = 0,
                     confidence: float = 0.95) -> Interval:
    """Percentile bootstrap of mean(a[q] - b[q]) over the queries ``q`` (both scored on the same queries)."""
    alpha = _check_confidence(confidence)
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be positive, got {n_resamples}")
    if set(a) != set(b):
        only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
        raise ValueError(f"paired_bootstrap needs the same queries in a and b: {len(only_a)} only in a "
                         f"{only_a[:3]}, {len(only_b)} only in b {only_b[:3]}")
    if not a:
        raise ValueError("paired_bootstrap got no queries")
    queries = sorted(a)
    diffs = np.array([a[q] for q in queries], dtype=np.float64) - np.array([b[q] for q in queries], np.float64)
    rng = np.random.default_rng(seed)
    block = max(1, _BLOCK_ELEMENTS // len(diffs))
    means = np.concatenate([diffs[rng.integers(0, len(diffs), (min(block, n_resamples - start), len(diffs)))]
                            .mean(axis=1) for start in range(0, n_resamples, block)])
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return _interval(diffs.mean(), low, high)


def seed_interval(diffs: Sequence[float], confidence: float = 0.95) -> Interval:
    """Student t-interval of the mean of per-seed differences (each seed's mean score of A minus B)."""
    alpha = _check_confidence(confidence)
    values = np.asarray(diffs, dtype=np.float64)
    if values.ndim != 1 or len(values) < 2:
        raise ValueError(f"seed_interval needs at least 2 per-seed differences, got {values.tolist()}")
    mean = values.mean()
    half = stats.t.ppf(1 - alpha / 2, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values))
    return _interval(mean, mean - half, mean + half)


def compare_to_reference(per_query: Mapping[str, Mapping[int | str, Mapping[str, float]]], reference: str = "smec",
                         n_resamples: int = 2000, seed: int = 0, confidence: float = 0.95) -> dict:
    """``{other: {str(dim): {"diff", "low", "high", "significant"}}}``: ``reference`` minus every other method
    (positive: the reference is better) at each of the reference's dims, from ``{method: {dim: {qid: score}}}``."""
    if reference not in per_query:
        raise ValueError(f"reference method {reference!r} has no per-query scores; got {sorted(per_query)}")
    ref = {str(d): scores for d, scores in per_query[reference].items()}
    table = {}
    for other, by_dim in per_query.items():
        if other == reference:
            continue
        scores = {str(d): s for d, s in by_dim.items()}
        missing = [d for d in ref if d not in scores]
        if missing:
            raise ValueError(f"method {other!r} has no per-query scores at dims {missing}")
        table[other] = {d: paired_bootstrap(ref[d], scores[d], n_resamples, seed, confidence).as_dict() for d in ref}
    return table


def comparison_markdown(table: Mapping[str, Mapping[str, Mapping]], reference: str = "smec") -> str:
    """:func:`compare_to_reference`'s table as markdown: ``diff [low, high]``, ``*`` where significant."""
    dims = list(next(iter(table.values()))) if table else []
    lines = [f"Difference of mean nDCG@10, {reference} minus each method (paired bootstrap over queries); "
             "* the interval excludes 0.", "",
             "| method | " + " | ".join(dims) + " |", "|---|" + "---:|" * len(dims)]
    for other, by_dim in table.items():
        cells = [f"{c['diff']:+.4f} [{c['low']:+.4f}, {c['high']:+.4f}]{'*' if c['significant'] else ''}"
                 for c in (by_dim[d] for d in dims)]
        lines.append(f"| {other} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
