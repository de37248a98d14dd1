"""``SMECSettings``: SMEC's own hyperparameters, beside the shared :class:`~smec_hf.core.config.FitConfig`.

The paper leaves most of these unstated (see the project's method notes); each default below was
chosen on held-out *train* queries of SciFact with all-MiniLM-L6-v2, never on test queries.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from ..core.config import FitConfig
from .selection import check_search

if TYPE_CHECKING:
    from ..engine.loop import Schedule


@dataclass
class SMECSettings(FitConfig):
    """The shared fit settings plus SMEC's stage chain, ADS, S-XBM and per-stage schedule."""

    # --- the stage chain ------------------------------------------------------------------------
    later_stage_map: Literal["orthogonal", "general"] = field(default="orthogonal", metadata={
        "help": "map of stages after the first: 'orthogonal' keeps every larger level's geometry exactly "
                "frozen; 'general' is the ablation that rewrites it"})

    head_bias: bool = field(default=False, metadata={
        "help": "give the head a bias (stage 1 then works in the *centred* PCA basis). Off: the folded head is one "
                "bias-free linear map, which vLLM and TEI (pooling -> projection -> cut -> normalise) serve with "
                "Sentence-Transformers' exact directions; with a bias they differ"})

    do_no_harm: bool = field(default=True, metadata={
        "help": "after training, ship the trained head unless the bias-free PCA rotation beats it at some size on the "
                "held-out queries by more than their noise (with --group-by positive|FIELD: at all); then ship the "
                "best of its blends towards the start, PCA, and truncation where it is at or above PCA at every size "
                "(smec_hf.smec.no_harm)"})

    search: tuple[str, ...] = field(default=(), metadata={
        "help": "settings tried per stage beside the run's own (smec_hf.smec.selection); a candidate replaces the run's "
                "own only where it beats them on the held-out queries by more than noise: sxbm_x10 (10x the S-XBM "
                "weight: closer to the frozen geometry), sxbm_off, no_ads (this stage keeps a plain prefix), lr_third, "
                "lookahead_1, corpus (Matryoshka-Adaptor's corpus regularisers, --corpus-weight 0.01). Each costs one "
                "more training of every stage. Off by default: with held-out queries drawn like the training ones the "
                "stages train from their start, and on SciFact's first two seeds the candidates split both ways "
                "(stage 1: -0.016 / +0.018 held-out nDCG@10 for sxbm_x10) at five times the cost"})

    # --- ADS ------------------------------------------------------------------------------------
    use_ads: bool = field(default=True, metadata={"help": "learn which coordinates each stage keeps (ADS)"})
    ads_temperature_start: float = field(default=0.1, metadata={
        "help": "ADS temperature at the start of each stage: selection samples from softmax(logits / T) (paper: "
                "unstated; held-out nDCG@10 at 384/128/32: 0.881/0.848/0.686 with 0.1, 0.852/0.832/0.724 with 1.0)"})
    ads_temperature_end: float = field(default=0.01, metadata={
        "help": "temperature annealed to (geometrically) by the stage's last epoch"})
    ads_lr: float = field(default=1e-2, metadata={
        "help": "learning rate of the ADS logits; larger than the FC's so the selection can move"})

    # --- S-XBM ----------------------------------------------------------------------------------
    use_sxbm: bool = field(default=True, metadata={"help": "add the S-XBM similarity-preservation loss"})
    memory_size: int = field(default=5000, metadata={"help": "S-XBM FIFO size (paper's trade-off: 5,000)"})
    memory_top_k: int = field(default=10, metadata={"help": "neighbours selected per batch item (paper: unstated)"})
    sxbm_target: Literal["frozen", "teacher"] = field(default="frozen", metadata={
        "help": "similarities L_unsup aligns to: 'frozen' = the frozen full-dim embeddings (the paper); 'teacher' = "
                "the stage's larger level D(s-1) of the current chain (detached)"})
    unsup_weight: float = field(default=0.002, metadata={
        "help": "w in L_rank + w * L_unsup, both losses being means over their pairs. The paper's 0.1 weighs *sums*: "
                "with ~147k ranking triples and ~2.6k memory pairs per batch that is w = 0.1 * 2.6k / 147k ~ 0.002 "
                "here. Held-out nDCG@10 at 384/128/32: 0.884/0.853/0.731 at 0.002, 0.837/0.779/0.582 at 0.1"})

    corpus_weight: float = field(default=0.0, metadata={
        "help": "weight of Matryoshka-Adaptor's corpus regularisers beside L_rank at each stage's levels: random corpus "
                "documents keep their frozen similarities to their 10 nearest documents and to the batch "
                "(engine.losses.corpus_structure_loss). 0.01 is its ratio (L_rank weighted 100). The corpus is there "
                "at training time, new topics' documents included, which is what this term sees and L_rank does not"})

    # --- the stage objective and schedule -------------------------------------------------------
    lookahead_weight: float = field(default=0.1, metadata={
        "help": "while stage s trains, the smaller levels D(s+1)... (prefixes of its output) add their ranking loss "
                "times this, so a stage leaves room for the levels later carved out of it. Held-out nDCG@10 at "
                "384/64/32, mean of 3 seeds (stage 1 then in the raw basis): 0.849/0.804/0.727 at 0, "
                "0.848/0.818/0.737 at 0.1, 0.843/0.803/0.741 at 1"})
    max_epochs: int = field(default=100, metadata={
        "help": "epochs per stage at most (stage 1 was still improving at 40, the paper's curve length)"})
    patience: int = field(default=10, metadata={
        "help": "stop a stage after this many evaluations without improvement (10 matched or beat 5 on held-out at every dim)"})
    eval_every: int = field(default=1, metadata={"help": "evaluate on held-out train queries every N epochs"})
    ema_decay: float = field(default=0.0, metadata={
        "help": "per-step decay of an exponential moving average of the stage's weights; held-out scores and the kept "
                "stage use the average (0 = off). Not a default: on two validation folds that early stopping never saw "
                "(20% of SciFact's train queries each), 0.9 moved nDCG@10 at 64/32 by +0.015/+0.010 (4 seeds) and "
                "-0.001/-0.010 (5 seeds)"})
    mixed_precision: Literal["no", "bf16", "fp16"] = field(default="no", metadata={
        "help": "Accelerate mixed precision for the head's forward passes"})
    checkpoint_every: int = field(default=1, metadata={"help": "save a resumable checkpoint every N epochs"})
    stage1_head: Literal["linear", "residual_mlp"] = field(default="linear", metadata={
        "help": "stage 1's map in the PCA basis: 'linear' (one matrix; the head folds to one Dense) or 'residual_mlp' "
                "(x + W2 relu(W1 x), bias-free, W2 starting at zero so training starts from PCA; exported as two "
                "built-in Dense layers, the first with ReLU)"})
    stage1_hidden: int = field(default=512, metadata={
        "help": "hidden width h of the residual MLP (stage1_head 'residual_mlp' only); the export's first Dense has "
                "h + 2 * dim outputs"})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.search = tuple(check_search(self.search))
        self._check({
            "memory_size": self.memory_size >= 1, "memory_top_k": self.memory_top_k >= 1,
            "max_epochs": self.max_epochs >= 1, "patience": self.patience >= 1, "eval_every": self.eval_every >= 1,
            "ads_lr": self.ads_lr > 0, "ads_temperature_start": self.ads_temperature_start > 0,
            "ads_temperature_end": 0 < self.ads_temperature_end <= self.ads_temperature_start,
            "unsup_weight": self.unsup_weight >= 0, "lookahead_weight": self.lookahead_weight >= 0,
            "corpus_weight": self.corpus_weight >= 0,
            "ema_decay": 0.0 <= self.ema_decay < 1.0, "checkpoint_every": self.checkpoint_every >= 1,
            "stage1_hidden": self.stage1_hidden >= 1,
            "head_bias": not (self.head_bias and self.stage1_head == "residual_mlp"),
        })

    @property
    def stage_schedule(self) -> "Schedule":
        """Each stage's epoch budget and early stopping."""
        from ..engine.loop import Schedule   # deferred: the CLI builds its options from this class without torch

        return Schedule(max_epochs=self.max_epochs, patience=self.patience, eval_every=self.eval_every)
