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

``stage1="residual_mlp"`` makes stage 1 ``y = x + W2 relu(W1 x)`` instead (bias-free, ``W2`` zero at the start, so
training still starts from PCA exactly): Matryoshka-Adaptor's non-linearity inside SMEC. The chain then no longer
folds to one matrix, but it is still positively homogeneous and exports as two built-in ``Dense`` layers
(:meth:`SMECChain.dense_layers`), because ``x + W2 relu(W1 x) = W2 relu(W1 x) + relu(x) - relu(-x)``.
"""
from __future__ import annotations

import copy
import inspect
import json
from pathlib import Path
from typing import Callable, Literal, Sequence

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn.utils.parametrizations import orthogonal

from ..core import layout
from ..core.io import atomic_write_json
from .ads import AdaptiveDimensionSelector

StageMap = Literal["general", "orthogonal"]
Stage1 = Literal["linear", "residual_mlp"]
IDENTITY = "torch.nn.modules.linear.Identity"   # Dense activation names, as Sentence-Transformers saves them
RELU = "torch.nn.modules.activation.ReLU"


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


class _RecordsWeightGrad(nn.Module):
    """Keeps ``weight_grad``: d loss / d (the stage's output-row matrix), summed over the step's forward passes, for
    the SMRL gradient diagnostic (:func:`~smec_hf.smec.objective.gradient_split`)."""

    weight_grad: torch.Tensor | None = None

    def _record_weight_grad(self, grad: torch.Tensor) -> None:
        self.weight_grad = grad.detach() if self.weight_grad is None else self.weight_grad + grad.detach()


class SMRLStage(_RecordsWeightGrad):
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

    def forward(self, block: torch.Tensor) -> torch.Tensor:
        # the effective matrix, also for the orthogonal parametrisation
        weight = _watched(self.fc.weight, self._record_weight_grad)
        out = nn.functional.linear(block, weight, self.fc.bias)
        return self.ads(out) if self.ads is not None else out


def _watched(weight: torch.Tensor, record: Callable[[torch.Tensor], None]) -> torch.Tensor:
    """``weight``, with ``record`` called on its gradient in this forward pass only.

    A hook on a leaf parameter stays for good (it would fire once more for every forward pass so far), so a leaf
    is hooked through a view, which is the same tensor to every computation.
    """
    if not (weight.requires_grad and torch.is_grad_enabled()):
        return weight
    if weight.is_leaf:
        weight = weight.view_as(weight)
    weight.register_hook(record)
    return weight


class ResidualMLP(nn.Module):
    """``x + w2(relu(w1(x)))`` with no bias and ``w2`` zero, so it starts as the identity (Matryoshka-Adaptor's
    shape, bias-free so that the chain stays positively homogeneous)."""

    def __init__(self, features: int, hidden: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(features, hidden, bias=False)
        self.w2 = nn.Linear(hidden, features, bias=False)
        nn.init.zeros_(self.w2.weight)

    def forward(self, x: torch.Tensor, w2: torch.Tensor | None = None) -> torch.Tensor:
        """``w2``: the outer matrix to use (default ``self.w2.weight``; the stage passes a hooked view of it)."""
        hidden = torch.relu(self.w1(x))
        return x + nn.functional.linear(hidden, self.w2.weight if w2 is None else w2)


class ResidualMLPStage(_RecordsWeightGrad):
    """Stage 1 as a residual MLP over the whole input, then ADS (or a plain prefix); :class:`SMRLStage`'s interface.

    ``fc`` is the MLP (what the trainer optimises and :func:`~smec_hf.smec.objective.init_ads` scores), and
    ``weight_grad`` is the gradient of ``W2``, whose rows are the output coordinates, as the FC rows are in
    :class:`SMRLStage`, so the kept / dropped gradient split means the same.
    """

    def __init__(self, in_features: int, out_features: int, hidden: int, use_ads: bool,
                 ads_temperature: float = 1.0) -> None:
        super().__init__()
        self.in_features, self.out_features, self.hidden = in_features, out_features, hidden
        self.fc = ResidualMLP(in_features, hidden)
        self.ads = AdaptiveDimensionSelector(in_features, out_features, ads_temperature) if use_ads else None

    def forward(self, block: torch.Tensor) -> torch.Tensor:
        out = self.fc(block, _watched(self.fc.w2.weight, self._record_weight_grad))
        return self.ads(out) if self.ads is not None else out


class SMECChain(nn.Module):
    """The stage chain over one running ``D0``-dim vector; prefixes of its output nest."""

    def __init__(self, dims: Sequence[int], later_stage_map: StageMap = "orthogonal",
                 use_ads: bool | Sequence[bool] = True, ads_temperature: float = 1.0, bias: bool = False,
                 stage1: Stage1 = "linear", hidden: int = 0) -> None:
        """``use_ads``: for every stage, or one flag per stage (a per-stage search may keep a plain prefix at one);
        ``stage1``: "linear" (a general matrix) or "residual_mlp" (``x + W2 relu(W1 x)``, bias-free);
        ``hidden``: the residual MLP's width (ignored, and recorded as 0, for a linear stage 1)."""
        super().__init__()
        self.dims = validate_dimension_path(dims)
        n_stages = len(self.dims) - 1
        stage_ads = [bool(use_ads)] * n_stages if isinstance(use_ads, bool) else [bool(a) for a in use_ads]
        if len(stage_ads) != n_stages:
            raise ValueError(f"use_ads: one flag per stage ({n_stages}) or one for all, got {list(use_ads)}")
        if stage1 not in ("linear", "residual_mlp"):
            raise ValueError(f"stage1 must be 'linear' or 'residual_mlp', got {stage1!r}")
        if stage1 == "residual_mlp" and int(hidden) < 1:
            raise ValueError(f"hidden (the residual MLP's width) must be >= 1 with stage1='residual_mlp', got {hidden}")
        if stage1 == "residual_mlp" and bias:
            raise ValueError("stage1='residual_mlp' is bias-free: build it with bias=False")
        self.later_stage_map = later_stage_map
        self.ads_temperature = ads_temperature
        self.bias = bias
        self.stage1 = stage1
        self.hidden = int(hidden) if stage1 == "residual_mlp" else 0
        # a fixed affine change of basis before stage 1 (identity unless set_input_basis is called): Adam's
        # per-coordinate steps then act on PCA coordinates, which trained better than steps on raw ones
        self.register_buffer("basis_weight", torch.eye(self.dims[0]))
        self.register_buffer("basis_bias", torch.zeros(self.dims[0]))
        self.stages = nn.ModuleList(
            ResidualMLPStage(self.dims[0], self.dims[1], self.hidden, stage_ads[0], ads_temperature)
            if s == 0 and not self.is_linear else
            SMRLStage(self.dims[s], self.dims[s + 1], "general" if s == 0 else later_stage_map, stage_ads[s],
                      ads_temperature, bias)
            for s in range(n_stages)
        )

    @property
    def input_dim(self) -> int:
        return self.dims[0]

    @property
    def is_linear(self) -> bool:
        """Whether the whole chain is one affine map (:meth:`fold`); false for a residual-MLP stage 1."""
        return self.stage1 == "linear"

    def forward(self, x: torch.Tensor, n_stages: int | None = None) -> torch.Tensor:
        """Run the first ``n_stages`` stages (all by default; 0 returns ``x``: the frozen baseline)."""
        if x.shape[-1] != self.input_dim:
            raise ValueError(f"expected embeddings of dimension {self.input_dim}, got {x.shape[-1]}")
        y = x @ self.basis_weight.T + self.basis_bias
        for s in range(len(self.stages[:n_stages])):
            y = self._step(y, s)
        return y

    @torch.no_grad()
    def frozen_output(self, x: torch.Tensor, n_stages: int, width: int | None = None) -> torch.Tensor:
        """``self(x, n_stages)[:, :width]`` without gradient, for stages that no longer train. A linear chain's first
        ``n_stages`` are folded once into one affine map, kept while their weights are unchanged (keyed by each
        tensor's storage and in-place version), so a training step pays one matrix product for them instead of one
        per stage plus every orthogonal stage's matrix exponential; only the map's first ``width`` rows are
        applied (a stage reads its leading block only: at 1024 -> 512 -> 256 the product shrinks 2x, then 4x)."""
        if not self.is_linear:
            return self(x, n_stages)[:, :width]
        if n_stages == 0:
            return x @ self.basis_weight[:width].T + self.basis_bias[:width]
        tensors = [self.basis_weight, self.basis_bias] + [t for stage in self.stages[:n_stages]
                                                           for t in (*stage.parameters(), *stage.buffers())]
        key = (n_stages, str(x.device), tuple((t.data_ptr(), t._version) for t in tensors))
        folded = self.__dict__.get("_folded")
        if folded is None or folded[0] != key:
            weight, bias = self.fold(n_stages)
            folded = self.__dict__["_folded"] = (key, weight.to(x.device), bias.to(x.device))
        return x @ folded[1][:width].T + folded[2][:width]

    def _step(self, y: torch.Tensor, s: int) -> torch.Tensor:
        """Stage ``s`` on the leading block of the running vector; the rest passes through."""
        lead = self.dims[s]
        return torch.cat([self.stages[s](y[:, :lead]), y[:, lead:]], dim=1)

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

        Computed in float64 by pushing the identity through the chain, so any linear stage type folds.
        """
        if not self.is_linear:
            raise ValueError("fold() needs a linear chain, but stage 1 is a residual MLP (stage1='residual_mlp'): "
                             "use dense_layers(), or the chain itself")
        chain = copy.deepcopy(self).double().eval()
        eye = torch.eye(self.input_dim, dtype=torch.float64)
        bias = chain(torch.zeros(1, self.input_dim, dtype=torch.float64), n_stages)[0]
        weight = (chain(eye, n_stages) - bias).T
        return weight.float().contiguous(), bias.float().contiguous()

    @torch.no_grad()
    def dense_layers(self) -> list[tuple[torch.Tensor, str]]:
        """The inference chain as bias-free ``Dense`` layers, applied in order: ``(weight [out, in], activation)``,
        the activation named as Sentence-Transformers' ``Dense`` saves it.

        Linear: one layer, the :meth:`fold`. Residual MLP: with ``B`` the input basis and ``L`` the linear rest
        (stage 1's ADS permutation and the later stages, folded), ``Dense(D -> h + 2D, ReLU)`` with weight
        ``[W1 B; B; -B]``, then ``Dense(h + 2D -> D, identity)`` with weight ``L [W2, I, -I]``, since
        ``x + W2 relu(W1 x) = W2 relu(W1 x) + relu(x) - relu(-x)``. Computed in float64, returned in float32.
        """
        if self.bias:
            raise ValueError("dense_layers() describes bias-free chains; this one has a bias (bias=True): use fold()")
        if self.is_linear:
            return [(self.fold()[0], IDENTITY)]
        chain = copy.deepcopy(self).double().eval()
        first, basis = chain.stages[0], chain.basis_weight
        eye = torch.eye(self.input_dim, dtype=torch.float64)
        rest = first.ads(eye) if first.ads is not None else eye     # row i: the rest of the chain applied to e_i
        for s in range(1, len(chain.stages)):
            rest = chain._step(rest, s)
        inner = torch.cat([first.fc.w1.weight @ basis, basis, -basis])
        outer = rest.T @ torch.cat([first.fc.w2.weight, eye, -eye], dim=1)
        return [(inner.float().contiguous(), RELU), (outer.float().contiguous(), IDENTITY)]

    @torch.no_grad()
    def shrunk_towards_start(self, alpha: float) -> "SMECChain":
        """A copy whose stage 1 is moved towards its start (the identity) by ``alpha`` in [0, 1]; all else as is.

        Linear: ``W = I + alpha (W - I)`` (and ``alpha`` times its bias); residual MLP: ``W2`` times ``alpha``.
        ``alpha=1`` is this chain exactly, ``alpha=0`` leaves stage 1 the identity (the PCA start).
        """
        if not 0.0 <= float(alpha) <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        chain = copy.deepcopy(self)
        fc = chain.stages[0].fc
        if self.is_linear:
            fc.weight.copy_(torch.lerp(torch.eye(self.input_dim, dtype=fc.weight.dtype, device=fc.weight.device),
                                       fc.weight, float(alpha)))    # lerp is exact at both ends
            if fc.bias is not None:
                fc.bias.mul_(float(alpha))
        else:
            fc.w2.weight.mul_(float(alpha))
        return chain

    @property
    def use_ads(self) -> bool | list[bool]:
        """Whether each stage selects with ADS: one flag when all agree, else one per stage."""
        flags = [stage.ads is not None for stage in self.stages]
        return flags[0] if len(set(flags)) == 1 else flags

    def drop_ads(self, s: int) -> None:
        """Stage ``s`` keeps a plain prefix of its map's output instead of an ADS selection."""
        self.stages[s].ads = None

    def config_dict(self) -> dict:
        return {"dims": self.dims, "later_stage_map": self.later_stage_map, "use_ads": self.use_ads,
                "ads_temperature": self.ads_temperature, "bias": self.bias, "stage1": self.stage1,
                "hidden": self.hidden}

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
