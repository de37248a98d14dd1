"""Do no harm: the head a run ships is not below PCA, at any trained size, by more than the held-out set's noise.

A head fitted to its training topics can fall below PCA on new ones (SQuAD split by article: 0.03 below at every
size with a random held-out split). After training, the trained chain, copies of it moved back towards its start
(stage 1 towards the identity, i.e. towards the frozen geometry, by :meth:`SMECChain.shrunk_towards_start`), PCA
and truncation (both exact chains too) are scored on every held-out query at every level. The trained head is the
default and is shipped unless PCA beats it at some level by more than the noise
(:func:`~smec_hf.engine.evidence.clearly_above`): with ~80 held-out queries a mean a few thousandths lower is a coin
flip, not harm, and with too few queries nothing can be told and the trained head stays. Held-out queries grouped
by document or topic (``--group-by positive|FIELD``) are the user's stand-in for the new topics they fear, so there
the floor is the mean itself (``strict``): a head below PCA on them at any size is replaced, as long as there are
:data:`STRICT_MIN_QUERIES` of them to say so (SQuAD by article: trained heads 0.004-0.015 below PCA at 64 / 32 on
the held-out articles were within the t-test's noise, and shipped, under the other rule). A head that is replaced
gives way to the best mean among the blends that PCA does not clearly beat either, PCA itself, and truncation
where it is at or above PCA at every level (truncation is never shipped below PCA). A nested head cannot take PCA
at one size and the trained head at another: each size's vector is a prefix of the larger ones. The held-out split
also chose the trained head's epochs, which favours keeping it: the check is a floor, not a tuner.
"""
from __future__ import annotations

from typing import Callable, Mapping

import numpy as np
import torch

from ..engine.evidence import MIN_QUERIES, clearly_above, paired_difference
from .chain import SMECChain

BLEND_FACTORS = (0.75, 0.5, 0.25)   # how much of stage 1's learned change the blended candidates keep
TOLERANCE = 1e-6                    # float noise: PCA at full size is a rotation of the frozen vectors
STRICT_MIN_QUERIES = 30             # fewer grouped held-out queries than this: one moves a mean by over 0.03

Scores = Mapping[int, float]
PerQuery = Mapping[int, np.ndarray]   # by level: every held-out query's score, in one order


def below_floor(scores: Scores, floor: Scores) -> list[int]:
    """The sizes where ``scores`` fall below ``floor`` (beyond float noise)."""
    return [k for k in sorted(floor, reverse=True) if scores[k] < floor[k] - TOLERANCE]


def clearly_below(scores: PerQuery, floor: PerQuery) -> list[int]:
    """The sizes where ``floor`` beats ``scores`` on the same queries by more than noise: where a head does harm."""
    return [k for k in sorted(floor, reverse=True) if clearly_above(floor[k], scores[k])]


def out_of_order(scores: PerQuery) -> list[tuple[int, int]]:
    """Pairs (larger, smaller) of adjacent levels where the smaller one scores above the larger by more than noise:
    a nested model whose bigger embedding is worse makes no sense (and usually means an overfit small level)."""
    levels = sorted(scores, reverse=True)
    return [(big, small) for big, small in zip(levels, levels[1:]) if clearly_above(scores[small], scores[big])]


def reference_chains(chain: SMECChain, basis: tuple[torch.Tensor, torch.Tensor | None]) -> dict[str, SMECChain]:
    """PCA (stage 1's input ``basis``, identity stages) and truncation (no basis), as frozen chains of ``chain``'s
    path: exported like any head."""
    references = {}
    for name in ("pca", "truncation"):
        reference = SMECChain(chain.dims, chain.later_stage_map, use_ads=False, bias=chain.bias)
        if name == "pca":
            reference.set_input_basis(*basis)
        references[name] = reference.requires_grad_(False).eval()
    return references


def choose_head(chain: SMECChain, score: Callable[[SMECChain], PerQuery],
                basis: tuple[torch.Tensor, torch.Tensor | None], strict: bool = False) -> tuple[SMECChain, dict]:
    """The head to ship and the record of the choice: each candidate's mean score by level, the floor, the evidence,
    what was kept. ``score`` gives a chain's per-query held-out scores by level; ``strict`` holds the floor by the
    means (grouped held-out queries) instead of beyond noise."""
    candidates = {"trained": chain, **{f"blend {a}": chain.shrunk_towards_start(a) for a in BLEND_FACTORS},
                  **reference_chains(chain, basis)}
    per_query = {name: {int(k): np.asarray(v, dtype=np.float64) for k, v in score(c).items()}
                 for name, c in candidates.items()}
    scores = {name: {k: float(v.mean()) for k, v in by_level.items()} for name, by_level in per_query.items()}
    dims = sorted(scores["trained"], reverse=True)
    floor = per_query["pca"]
    n_queries = len(floor[dims[0]])
    too_few = n_queries < (STRICT_MIN_QUERIES if strict else MIN_QUERIES)

    def harmful(name: str) -> list[int]:
        if strict:
            return [] if too_few else below_floor(scores[name], scores["pca"])
        return clearly_below(per_query[name], floor)

    harm = harmful("trained")
    if harm:
        eligible = [name for name in candidates if name not in ("trained", "truncation") and not harmful(name)]
        eligible += [] if below_floor(scores["truncation"], scores["pca"]) else ["truncation"]
        # "pca" is always eligible; candidates are in order of preference, so the closest to the trained head wins ties
        kept = max(eligible, key=lambda name: (np.mean([scores[name][k] for k in dims]), -list(candidates).index(name)))
    else:
        kept = "trained"
    record = {"kept": kept, "below_floor": harm, "floor": scores["pca"], "scores": scores, "strict": strict,
              "queries": n_queries, "too_few_queries": too_few,
              "evidence": {k: paired_difference(per_query["trained"][k], floor[k]).describe() for k in dims},
              "out_of_order": [list(pair) for pair in out_of_order(per_query[kept])],
              "levels": {k: {"trained": scores["trained"][k], "pca": scores["pca"][k],
                             "truncation": scores["truncation"][k], "shipped": scores[kept][k]} for k in dims}}
    return candidates[kept], record


def shipped_head(record: Mapping) -> str:
    """What the shipped model is, in words a model card can carry."""
    kept = record["kept"]
    if kept == "trained":
        return "the trained SMEC head"
    if kept == "pca":
        return "the encoder's PCA rotation (no trained level beat PCA on the held-out queries)"
    if kept == "truncation":
        return "the encoder's own first coordinates (truncation; no trained level beat PCA on the held-out queries)"
    share = float(kept.split()[-1])
    return f"the trained SMEC head moved back towards its PCA start, keeping {share:.0%} of stage 1's learned change"


def describe(record: Mapping) -> list[str]:
    """Plain sentences for the run's notes."""
    below, n = record["below_floor"], record["queries"]
    if record.get("too_few_queries"):
        notes = [f"only {n} held-out queries: too few to tell the trained head from PCA; shipped the trained head"]
    elif not below:
        margin = "" if record.get("strict") else " by more than noise"
        notes = [f"the trained head is not below PCA{margin} at any size on the held-out queries ({n} queries); "
                 f"shipped: {shipped_head(record)}"]
    else:
        sizes = ", ".join(map(str, below))
        margin = "" if record.get("strict") else " by more than noise"
        notes = [f"the trained head scored below PCA{margin} on the held-out queries at {sizes} dims; "
                 f"shipped instead: {shipped_head(record)} (scores by size in smec_run.json, 'head_choice')"]
    levels = {int(k): v for k, v in record["levels"].items()}
    for big, small in record.get("out_of_order", []):
        notes.append(f"the shipped {big}-d level scores below its own {small}-d level on the held-out queries by more "
                     f"than noise ({levels[big]['shipped']:.4f} against {levels[small]['shipped']:.4f}): a nested "
                     "model should not get worse as it grows; check the held-out split and the smaller level's stage")
    return notes
