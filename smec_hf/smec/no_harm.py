"""Do no harm: the head a run ships never scores below PCA, at any trained size, on the held-out queries.

A head fitted to its training topics can fall below PCA on new ones (SQuAD split by article: 0.03 below at every
size with the defaults). The held-out split is grouped (``FitConfig.group_by``), so its score sees that drift. After
training, the trained chain, copies of it moved back towards its start (stage 1 towards the identity, i.e. towards
the frozen geometry, by :meth:`SMECChain.shrunk_towards_start`), PCA and truncation (both exact chains too) are
scored at every level; the shipped head is the best mean among those at or above PCA at every level (truncation is
scored and reported too; it is a floor only where it is also shipped). PCA always qualifies against itself, so the
guarantee holds whatever training did, and a nested head cannot take PCA at one size and the trained head at
another: each size's vector is a prefix of the larger ones. The held-out
split also chose the trained head's epochs, which favours keeping it: the check is a floor, not a tuner.
"""
from __future__ import annotations

from typing import Callable, Mapping

import numpy as np
import torch

from .chain import SMECChain

BLEND_FACTORS = (0.75, 0.5, 0.25)   # how much of stage 1's learned change the blended candidates keep
TOLERANCE = 1e-6                    # float noise: PCA at full size is a rotation of the frozen vectors

Scores = Mapping[int, float]


def below_floor(scores: Scores, floor: Scores) -> list[int]:
    """The sizes where ``scores`` fall below ``floor`` (beyond float noise): where a head would do harm."""
    return [k for k in sorted(floor, reverse=True) if scores[k] < floor[k] - TOLERANCE]


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


def choose_head(chain: SMECChain, score: Callable[[SMECChain], Scores],
                basis: tuple[torch.Tensor, torch.Tensor | None]) -> tuple[SMECChain, dict]:
    """The head to ship and the record of the choice: each candidate's score by level, the floor, what was kept."""
    candidates = {"trained": chain, **{f"blend {a}": chain.shrunk_towards_start(a) for a in BLEND_FACTORS},
                  **reference_chains(chain, basis)}
    scores = {name: {int(k): float(v) for k, v in score(c).items()} for name, c in candidates.items()}
    dims = sorted(scores["trained"], reverse=True)
    floor = scores["pca"]
    eligible = [name for name, s in scores.items() if not below_floor(s, floor)]
    # "pca" is always eligible; candidates are in order of preference, so the trained head wins ties
    kept = max(eligible, key=lambda name: (np.mean([scores[name][k] for k in dims]), -list(candidates).index(name)))
    below = below_floor(scores["trained"], floor)
    record = {"kept": kept, "below_floor": below, "floor": floor, "scores": scores,
              "levels": {k: {"trained": scores["trained"][k], "pca": scores["pca"][k],
                             "truncation": scores["truncation"][k], "shipped": scores[kept][k]} for k in dims}}
    return candidates[kept], record


def describe(record: Mapping) -> str:
    """One plain sentence for the run's notes."""
    below = record["below_floor"]
    if not below:
        kept = "" if record["kept"] == "trained" else f"; shipped: {record['kept']}, higher on average"
        return f"the trained head scored at or above PCA at every size on the held-out queries{kept}"
    sizes = ", ".join(map(str, below))
    return (f"the trained head scored below PCA on the held-out queries at {sizes} dims; shipped "
            f"instead: {record['kept']} (scores by size in smec_run.json, 'head_choice')")
