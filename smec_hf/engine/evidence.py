"""When a held-out score difference is evidence and when it is noise.

~80 held-out queries move a mean nDCG@10 by ±0.02 between equally good heads, so a rule that follows the larger
mean flips with the seed (SciFact's demo: a 384-d result moved by 0.16 between two machines). Every decision that
moves a run away from its default (the trained epoch over the untrained start, a search candidate over the run's
own settings, a fallback over the trained head) asks instead whether the paired per-query differences clear a
one-sided t-test at :data:`CONFIDENCE`; with fewer than :data:`MIN_QUERIES` queries there is no evidence at all.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import stats

CONFIDENCE = 0.95   # one-sided: a candidate must beat the default at this level to replace it
MIN_QUERIES = 5     # fewer paired queries than this: too few to tell, the default stays
TIE = 1e-9          # differences this small are float noise, not a gain


@dataclass(frozen=True)
class Difference:
    """``a - b`` over paired queries: the mean, the one-sided margin it must exceed, and the verdict."""

    mean: float
    margin: float
    n: int

    @property
    def clear(self) -> bool:
        """``a`` is above ``b`` by more than the noise (and there are enough queries to say so)."""
        return self.n >= MIN_QUERIES and self.mean > max(self.margin, TIE)

    def describe(self) -> str:
        return f"{self.mean:+.4f} (noise margin {self.margin:.4f}, {self.n} queries)"


def paired_difference(a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE) -> Difference:
    """Per-query scores ``a`` and ``b`` of the same queries, in the same order."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if d.ndim != 1 or len(np.asarray(b)) != len(d):
        raise ValueError(f"paired scores must be two equal-length vectors, got {np.shape(a)} and {np.shape(b)}")
    n = len(d)
    if n < 2:
        return Difference(float(d.mean()) if n else 0.0, float("inf"), n)
    standard_error = float(d.std(ddof=1)) / np.sqrt(n)
    return Difference(float(d.mean()), float(stats.t.ppf(confidence, n - 1)) * standard_error, n)


def clearly_above(a: Sequence[float], b: Sequence[float]) -> bool:
    """``a`` beats ``b`` on the same queries by more than the held-out set's noise."""
    return paired_difference(a, b).clear
