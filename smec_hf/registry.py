"""Every compression method the package compares, by name: how to build it, its place in the report, how it exports.

Adding a method is one :class:`Method` entry here; fitting, MTEB scoring, the report and the CLI read this
table and name no method themselves. The order of :data:`METHODS` is the report's row order and also the
fitting order (the slowest first, so that with parallel workers the longest job never starts last; measured
on SciFact with MiniLM).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from .baselines.csr import CSRCompressor
from .baselines.frozen import PCACompressor, TruncationCompressor
from .baselines.matryoshka_adaptor import MatryoshkaAdaptorCompressor
from .baselines.mrl_finetune import MRLFinetuneCompressor
from .baselines.mrl_joint import MRLJointCompressor
from .baselines.search_adaptor import SearchAdaptorCompressor
from .core.config import FitConfig
from .core.types import Compressor
from .data.beir import RetrievalData
from .engine.loop import Schedule
from .smec.compressor import SMECCompressor
from .smec.end_to_end import SMECLoRACompressor
from .smec.settings import SMECSettings


@dataclass(frozen=True)
class BuildContext:
    """What a method's factory gets: the dims, the settings (SMEC's, of which baselines read the shared
    :class:`FitConfig` part), a folder for methods that write a run, the baselines' epoch budget, and for a method
    that fine-tunes the encoder itself the texts and the base model (None: vectors from elsewhere)."""

    dims: list[int]
    settings: SMECSettings
    run_dir: Path
    schedule: Schedule | None = None
    show_progress_bar: bool = True
    dataset: RetrievalData | None = None
    base_model: str | None = None
    trust_remote_code: bool = False

    @property
    def fit(self) -> FitConfig:
        return dataclasses.replace(FitConfig.fit_part(self.settings), dims=self.dims)


@dataclass(frozen=True)
class Method:
    """One registry entry.

    ``exports``: the fitted head ships as the run's model (a run record in ``run_dir``, then ``smec export``);
    ``needs_labels``: it cannot train on a corpus without queries (it is then left out);
    ``default``: it runs when no ``--methods`` are named (a method too slow for the demo runs only when named);
    ``line_style`` / ``emphasis``: how the report's plot draws it.
    """

    name: str
    build: Callable[[BuildContext], Compressor]
    description: str
    exports: bool = False
    needs_labels: bool = False
    default: bool = True
    line_style: str = "-"
    emphasis: bool = False


def _smec(name: str, **overrides: object) -> Callable[[BuildContext], Compressor]:
    def build(ctx: BuildContext) -> Compressor:
        settings = dataclasses.replace(ctx.settings, dims=ctx.dims, **overrides)
        return SMECCompressor(settings, ctx.run_dir, ctx.show_progress_bar, name=name)

    return build


METHODS: tuple[Method, ...] = (
    Method("smec", _smec("smec"), "SMEC: sequential stages, ADS and S-XBM (the exported model)", exports=True,
           emphasis=True),
    # opt-in: on SciFact with MiniLM on 2 CPU cores an epoch and its held-out scoring take minutes, and the corpus is
    # encoded again by the tuned encoder
    Method("mrl_finetune", lambda c: MRLFinetuneCompressor(
        c.dims, c.fit, c.dataset, c.base_model, c.run_dir, trust_remote_code=c.trust_remote_code,
        show_progress_bar=c.show_progress_bar),
        "the base encoder fine-tuned (LoRA) with Sentence-Transformers' MatryoshkaLoss(MNRL) at every dimension",
        needs_labels=True, default=False, line_style="-."),
    Method("smec_lora", lambda c: SMECLoRACompressor(
        dataclasses.replace(c.settings, dims=c.dims), c.dataset, c.base_model, c.run_dir,
        trust_remote_code=c.trust_remote_code, show_progress_bar=c.show_progress_bar),
        "end-to-end SMEC: a LoRA adapter on the encoder as stage 0 (MNRL at full size), then SMEC's stages on its "
        "vectors", needs_labels=True, default=False, line_style="-."),
    Method("csr", lambda c: CSRCompressor(c.dims, c.fit, c.schedule, per_size=False,
                                          show_progress_bar=c.show_progress_bar),
           "CSR: Sentence-Transformers' SparseAutoEncoder + CSRLoss; sparse codes with each dense size's bytes",
           needs_labels=True, line_style="--"),
    Method("matryoshka_adaptor", lambda c: MatryoshkaAdaptorCompressor(
        c.dims, c.fit, c.schedule, show_progress_bar=c.show_progress_bar),
        "Matryoshka-Adaptor: one residual MLP, every prefix trained jointly"),
    Method("search_adaptor", lambda c: SearchAdaptorCompressor(
        c.dims, c.fit, c.schedule, show_progress_bar=c.show_progress_bar),
        "Search-Adaptor: one residual adapter per dimension", needs_labels=True),
    Method("mrl_joint", lambda c: MRLJointCompressor(c.dims, c.fit, c.schedule, show_progress_bar=c.show_progress_bar),
           "SMEC's linear head trained jointly at every dimension (MRL)", line_style="-.", needs_labels=True),
    # the ablations keep their one change at every stage: no per-stage search
    Method("smec_no_ads", _smec("smec_no_ads", use_ads=False, search=()), "SMEC without ADS (ablation)",
           line_style=":"),
    Method("smec_no_sxbm", _smec("smec_no_sxbm", use_sxbm=False, search=()), "SMEC without S-XBM (ablation)",
           line_style=":"),
    Method("pca", lambda c: PCACompressor(c.dims), "centred PCA of the corpus", line_style="--"),
    Method("truncation", lambda c: TruncationCompressor(c.dims), "the frozen encoder cut to its first k coordinates",
           line_style="--"),
)
BY_NAME = {m.name: m for m in METHODS}
NAMES = tuple(BY_NAME)
FROZEN_REFERENCE = "truncation"   # at full size: the frozen encoder itself


def method(name: str) -> Method:
    if name not in BY_NAME:
        raise ValueError(f"unknown method {name!r}; choose from {', '.join(NAMES)}")
    return BY_NAME[name]


def check_methods(names: Sequence[str] | None, labelled: bool = True) -> list[str]:
    """The requested method names in registry order (by default every ``default`` one, or without labels those that
    train without); unknown names, or a method that needs labels on unlabelled data, raise ``ValueError``."""
    if names is None:
        return [m.name for m in METHODS if m.default and (labelled or not m.needs_labels)]
    unknown = sorted(set(names) - set(NAMES))
    if unknown or not names:
        raise ValueError(f"--methods: unknown {unknown or 'empty list'}; choose from {', '.join(NAMES)}")
    supervised = [m for m in names if BY_NAME[m].needs_labels]
    if supervised and not labelled:
        raise ValueError(f"--methods: {', '.join(supervised)} need(s) training queries; this dataset is a corpus only")
    return [m for m in NAMES if m in names]


def ordered(names: Sequence[str]) -> list[str]:
    """``names`` in registry order; names the registry does not know go last, sorted."""
    return [m for m in NAMES if m in names] + sorted(m for m in names if m not in BY_NAME)
