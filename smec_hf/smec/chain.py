"""SMRL — the sequential Matryoshka stage chain, laid out so that its prefixes nest.

The dimension path is ``D0 > D1 > ... > DS``. Stage ``s`` owns the transition ``D(s-1) -> D(s)``:
a fully-connected layer over the leading ``D(s-1)`` coordinates of one running output vector,
followed by ADS, which moves the ``D(s)`` coordinates it selects to the front. The coordinates
behind ``D(s-1)`` pass through untouched. After all stages, ``y[:, :k]`` *is* the SMEC ``k``-dim
embedding for every ``k`` in the path — what Sentence-Transformers' ``truncate_dim=k`` slices.

Why the later stages are orthogonal by default: a later stage rewrites coordinates that the larger,
already-trained levels also use. An orthogonal map (and ADS's permutation) of the leading block
leaves every larger level's cosine geometry exactly unchanged, so freezing an earlier stage really
freezes its levels. A general map (``later_stage_map="general"``) is available for ablation; it
measurably degrades the larger levels (see README, "Design choices").

Stage 1 is a general linear map applied in a fixed input basis (the corpus PCA, set by the trainer) and
started from the identity, so training starts from PCA. The whole inference chain folds into one matrix
(:meth:`SMECChain.fold`). By default it has no bias anywhere (``bias=False``): a bias-free map is positively
homogeneous, so serving engines that project the *un-normalised* pooled vector and normalise afterwards
(vLLM, TEI) give the same directions as Sentence-Transformers. ``bias=True`` (centred PCA, a bias in stage 1)
is the ablation, and what chains saved before format 2 hold.
"""
from __future__ import annotations

import copy
import inspect
import json
from pathlib import Path
from typing import Literal, Sequence

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn.utils.parametrizations import orthogonal

from ..core import layout
from ..core.io import atomic_write_json
from .ads import AdaptiveDimensionSelector

StageMap = Literal["general", "orthogonal"]


def default_dimension_path(dim: int, smallest: int = 32) -> list[int]:
    """``dim``, then the powers of two below it down to ``smallest`` (384 -> 256, 128, 64, 32)."""
    path = [dim]
    power = 1 << (dim - 1).bit_length() - 1 if dim & (dim - 1) else dim // 2
    while power >= smallest:
        path.append(power)
        power //= 2
    return path


def validate_dimension_path(dims: Sequence[int]) -> list[int]:
    dims = [int(d) for d in dims]
    if len(dims) < 2:
        raise ValueError(f"--dims needs the input dimension and at least one smaller one, got {dims}")
    if any(b >= a for a, b in zip(dims, dims[1:])) or dims[-1] < 1:
        raise ValueError(f"--dims must be strictly decreasing positive integers, got {dims}")
    return dims


class SMRLStage(nn.Module):
    """One SMRL transition: an FC layer over the leading block, then ADS (or a plain prefix)."""

    def __init__(self, in_features: int, out_features: int, map_kind: StageMap, use_ads: bool,
                 ads_temperature: float = 1.0, bias: bool = False) -> None:
        super().__init__()
        self.in_features, self.out_features, self.map_kind = in_features, out_features, map_kind
        self.fc = nn.Linear(in_features, in_features, bias=bias and map_kind == "general")
        with torch.no_grad():
            self.fc.weight.copy_(torch.eye(in_features))
            if self.fc.bias is not None:
                self.fc.bias.zero_()
        if map_kind == "orthogonal":
            orthogonal(self.fc)
        elif map_kind != "general":
            raise ValueError(f"map_kind must be 'general' or 'orthogonal', got {map_kind!r}")
        self.ads = AdaptiveDimensionSelector(in_features, out_features, ads_temperature) if use_ads else None
        self.weight_grad: torch.Tensor | None = None

    def forward(self, block: torch.Tensor) -> torch.Tensor:
        weight = self.fc.weight          # the effective matrix, also for the orthogonal parametrisation
        if weight.requires_grad:
            weight.register_hook(self._record_weight_grad)
        out = nn.functional.linear(block, weight, self.fc.bias)
        return self.ads(out) if self.ads is not None else out

    def _record_weight_grad(self, grad: torch.Tensor) -> None:
        """Keep d loss / d weight of the effective matrix for the SMRL gradient diagnostic."""
        self.weight_grad = grad.detach() if self.weight_grad is None else self.weight_grad + grad.detach()


class SMECChain(nn.Module):
    """The stage chain over one running ``D0``-dim vector; prefixes of its output nest."""

    def __init__(self, dims: Sequence[int], later_stage_map: StageMap = "orthogonal", use_ads: bool = True,
                 ads_temperature: float = 1.0, bias: bool = False) -> None:
        super().__init__()
        self.dims = validate_dimension_path(dims)
        self.later_stage_map = later_stage_map
        self.use_ads = use_ads
        self.ads_temperature = ads_temperature
        self.bias = bias
        # a fixed affine change of basis before stage 1 (identity unless set_input_basis is called): Adam's
        # per-coordinate steps then act on PCA coordinates, which trained better than steps on raw ones
        self.register_buffer("basis_weight", torch.eye(self.dims[0]))
        self.register_buffer("basis_bias", torch.zeros(self.dims[0]))
        self.stages = nn.ModuleList(
            SMRLStage(self.dims[s], self.dims[s + 1], "general" if s == 0 else later_stage_map, use_ads,
                      ads_temperature, bias)
            for s in range(len(self.dims) - 1)
        )

    @property
    def input_dim(self) -> int:
        return self.dims[0]

    def forward(self, x: torch.Tensor, n_stages: int | None = None) -> torch.Tensor:
        """Run the first ``n_stages`` stages (all by default; 0 returns ``x``: the frozen baseline)."""
        if x.shape[-1] != self.input_dim:
            raise ValueError(f"expected embeddings of dimension {self.input_dim}, got {x.shape[-1]}")
        y = x @ self.basis_weight.T + self.basis_bias
        for s, stage in enumerate(self.stages[:n_stages]):
            lead = self.dims[s]
            y = torch.cat([stage(y[:, :lead]), y[:, lead:]], dim=1)
        return y

    @torch.no_grad()
    def set_input_basis(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        """Express stage 1's input in a fixed basis ``x @ weight.T (+ bias)`` (e.g. the PCA); not trained."""
        if bias is not None and not self.bias and bool(bias.any()):
            raise ValueError("a bias-free chain (bias=False) takes no input offset; build it with bias=True to centre")
        self.basis_weight.copy_(weight)
        if bias is not None:
            self.basis_bias.copy_(bias)

    def freeze_stage(self, s: int) -> None:
        """Freeze stage ``s``: no gradients and a fixed (noise-free) ADS selection from now on."""
        stage = self.stages[s]
        stage.requires_grad_(False)
        stage.eval()

    def train(self, mode: bool = True) -> "SMECChain":
        """Keep frozen stages in eval mode so their ADS never samples again."""
        super().train(mode)
        for stage in self.stages:
            if not any(p.requires_grad for p in stage.parameters()):
                stage.eval()
        return self

    @torch.no_grad()
    def fold(self, n_stages: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The inference chain (its first ``n_stages``) as one affine map ``y = x @ weight.T + bias``.

        Computed in float64 by pushing the identity through the chain, so any stage type folds.
        """
        chain = copy.deepcopy(self).double().eval()
        eye = torch.eye(self.input_dim, dtype=torch.float64)
        bias = chain(torch.zeros(1, self.input_dim, dtype=torch.float64), n_stages)[0]
        weight = (chain(eye, n_stages) - bias).T
        return weight.float().contiguous(), bias.float().contiguous()

    def config_dict(self) -> dict:
        return {"dims": self.dims, "later_stage_map": self.later_stage_map, "use_ads": self.use_ads,
                "ads_temperature": self.ads_temperature, "bias": self.bias}

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, str(directory / layout.CHAIN_WEIGHTS_FILE))
        atomic_write_json(directory / layout.CHAIN_CONFIG_FILE,
                          {layout.FORMAT_KEY: layout.CHAIN_FORMAT, **self.config_dict()})

    @classmethod
    def load(cls, directory: str | Path) -> "SMECChain":
        """Load a saved chain; config keys this version does not know are dropped with a warning."""
        directory = Path(directory)
        for name in (layout.CHAIN_CONFIG_FILE, layout.CHAIN_WEIGHTS_FILE):
            if not (directory / name).is_file():
                raise FileNotFoundError(f"{directory / name} not found: not a saved SMEC chain")
        source = str(directory / layout.CHAIN_CONFIG_FILE)
        config = json.loads((directory / layout.CHAIN_CONFIG_FILE).read_text())
        layout.check_format(config, layout.CHAIN_FORMAT, source)
        if config.get(layout.FORMAT_KEY, 1) < 2:
            config.setdefault("bias", True)       # format 1 chains always had a bias
        accepted = set(inspect.signature(cls).parameters)
        return cls.from_state(layout.known_keys(config, accepted, source),
                              load_file(str(directory / layout.CHAIN_WEIGHTS_FILE)))

    @classmethod
    def from_state(cls, config: dict, state_dict: dict[str, torch.Tensor]) -> "SMECChain":
        """A frozen chain from :meth:`config_dict` and a state dict (also how it crosses process boundaries:
        torch cannot pickle the orthogonal parametrisation itself)."""
        chain = cls(**config)
        chain.load_state_dict(state_dict)
        for stage in chain.stages:
            stage.requires_grad_(False)
        return chain.eval()
