"""Per-stage choice of SMEC's settings on the held-out queries: defaults chosen per run, not per paper.

The settings that moved SMEC most on another encoder (its S-XBM weight, ADS on or off; on SciFact its learning rate
and lookahead weight) were tuned on one encoder and one dataset. Because stages train one after another, each can
be chosen on its own: stage ``s`` is trained from the same start once per candidate, each candidate is early-stopped
on the same held-out queries, and the run's own settings are kept unless a candidate beats them there by more than
the held-out set's noise (:mod:`smec_hf.engine.evidence`), then frozen, before stage ``s + 1`` starts. The cost is
one stage training per candidate; ``search=()`` keeps the fixed settings.
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

from ..engine.evidence import paired_difference
from ..engine.loop import LoopState

if TYPE_CHECKING:
    from .settings import SMECSettings

# name -> how the candidate changes the run's settings for one stage (always relative to the run's own values)
CANDIDATES: dict[str, Callable[["SMECSettings"], dict]] = {
    "sxbm_x10": lambda s: {"unsup_weight": s.unsup_weight * 10},   # held closer to the frozen geometry
    "sxbm_off": lambda s: {"use_sxbm": False},
    "no_ads": lambda s: {"use_ads": False},                          # this stage keeps a plain prefix
    "lr_third": lambda s: {"lr": s.lr / 3},
    "lookahead_1": lambda s: {"lookahead_weight": 1.0},
    "corpus": lambda s: {"corpus_weight": 0.01},                     # Matryoshka-Adaptor's corpus regularisers
}
DEFAULTS = "defaults"


def check_search(names: Sequence[str]) -> list[str]:
    """The candidate names, refused with the list when one is unknown."""
    unknown = [n for n in names if n not in CANDIDATES]
    if unknown:
        raise ValueError(f"search: unknown candidates {unknown}; known: {', '.join(CANDIDATES)}")
    return list(dict.fromkeys(names))


def stage_candidates(settings: "SMECSettings") -> dict[str, "SMECSettings"]:
    """The settings each candidate trains a stage with: the run's own first (it wins ties), then the search's."""
    options = {DEFAULTS: settings}
    for name in check_search(settings.search):
        changed = CANDIDATES[name](settings)
        if all(getattr(settings, k) == v for k, v in changed.items()):
            continue        # the same as the run's own settings (e.g. no_ads in a run without ADS)
        options[name] = dataclasses.replace(settings, **changed, search=())
    return options


def choose_candidate(trials: Mapping[str, LoopState]) -> tuple[str, dict[str, str]]:
    """The candidate to keep, from each candidate's early-stopped loop, and the evidence by candidate.

    The run's own settings (:data:`DEFAULTS`) stay unless another candidate is above them on the same held-out
    queries by more than the noise; of those that are, the highest mean wins. Without per-query scores (label-free
    runs) the highest mean wins, the run's own settings on ties."""
    names = list(trials)
    default = trials[DEFAULTS]
    if default.best_per_query is None:
        return max(names, key=lambda n: (trials[n].best_score, -names.index(n))), {}
    differences = {n: paired_difference(t.best_per_query, default.best_per_query) for n, t in trials.items()
                   if n != DEFAULTS}
    clear = [n for n, d in differences.items() if d.clear]
    chosen = max(clear, key=lambda n: trials[n].best_score) if clear else DEFAULTS
    return chosen, {n: d.describe() for n, d in differences.items()}
