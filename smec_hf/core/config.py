"""``FitConfig``: what every trained method shares (the dimension path, the examples, the split, the seed).

SMEC's own settings extend it (:class:`smec_hf.smec.settings.SMECSettings`); the baselines read only these
fields, so every supervised method trains on the same batches, negatives, loss scale and held-out split.
Each default was chosen on held-out *train* queries of SciFact with all-MiniLM-L6-v2, never on test queries.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import numbers
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from .io import atomic_write_json
from .layout import dataclass_from_dict

C = TypeVar("C", bound="FitConfig")


@dataclass
class FitConfig:
    """Settings every method is fitted with (the CLI exposes each field as ``--field-name``)."""

    dims: list[int] | None = field(default=None, metadata={
        "help": "dimension path D0 > D1 > ...; default: the encoder's dimension, then powers of two down to 32"})
    seed: int = field(default=0, metadata={"help": "seed for every random choice (data order, Gumbel noise, negatives)"})

    # --- training examples and the ranking loss ---------------------------------------------------
    batch_size: int = field(default=128, metadata={"help": "query-document pairs per step (Matryoshka-Adaptor's)"})
    hard_negatives: int = field(default=8, metadata={
        "help": "hard negatives per query, sampled from the frozen full-dim ranking"})
    hard_negative_pool: int = field(default=50, metadata={
        "help": "hard negatives are drawn from this many top frozen results (positives excluded)"})
    similarity_scale: float = field(default=20.0, metadata={
        "help": "cosines are multiplied by this inside the logistic loss (1 = the paper's literal form, "
                "which barely trains; 20 = a temperature of 0.05)"})

    # --- optimisation and early stopping ------------------------------------------------------------
    lr: float = field(default=3e-3, metadata={
        "help": "Adam learning rate of SMEC's stage FC layers and of the adaptor baselines (mrl_joint has its own); 3e-3 matched 1e-3 (Matryoshka-Adaptor's) on held-out "
                "nDCG@10 (mean over dims 0.836 vs 0.833) in a third of the training time"})
    epoch_pairs: int = field(default=8192, metadata={
        "help": "a training epoch (one held-out evaluation; the unit of patience and the epoch budget) covers at most "
                "this many fit pairs: a larger set continues its shuffled pass over the next epochs, so early stopping "
                "looks as often, in steps, at a million pairs as at SciFact's 900 (0 = always one whole pass)"})
    held_out_fraction: float = field(default=0.1, metadata={
        "help": "share of train queries held out for early stopping (never the test split)"})
    group_by: str = field(default="query", metadata={
        "help": "what held-out (early-stopping and validation) train queries are grouped by, so that no group is on "
                "both sides: 'query' (no grouping: held-out queries drawn like the training ones, for new queries "
                "over the same corpus, the usual case), 'positive' (queries sharing a relevant document stay "
                "together: for queries about documents training never touched), or a field of a BEIR folder's "
                "records (the query's own, else its first positive document's, top-level or under metadata; e.g. "
                "'article' for SQuAD, whose test split is by article: for new topics)"})
    query_groups: dict[str, str] | None = field(default=None, repr=False, compare=False, metadata={
        "cli": False, "help": "the field values --group-by names, by train query id (read from the data by the "
                              "pipeline; not saved with the settings)"})
    exact_search_max_docs: int = field(default=50_000, metadata={
        "help": "corpora up to this many documents are searched exactly while training; above it hard negatives "
                "are mined with a FAISS IVF index and held-out queries are scored on their frozen top 100 and "
                "judged documents (fixed once per run), so no epoch scans the corpus"})
    pca_init: bool = field(default=True, metadata={
        "help": "SMEC's stage 1 (and mrl_joint's head) works in the fixed centred-PCA basis of the corpus, starting from the identity, i.e. from "
                "PCA (an identity start in the raw basis loses ~0.1 nDCG@10 at 32-d)"})

    def __post_init__(self) -> None:
        self._check_types()
        self._check({**self._choices(),
            "batch_size": self.batch_size >= 2, "hard_negatives": self.hard_negatives >= 0,
            "hard_negative_pool": self.hard_negative_pool >= self.hard_negatives,
            "similarity_scale": self.similarity_scale > 0, "lr": self.lr > 0,
            "held_out_fraction": 0.0 < self.held_out_fraction < 1.0, "group_by": bool(self.group_by),
            "exact_search_max_docs": self.exact_search_max_docs >= 0, "epoch_pairs": self.epoch_pairs >= 0,
        })

    def _check(self, checks: dict[str, bool]) -> None:
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid {type(self).__name__}: " + ", ".join(f"{n}={getattr(self, n)!r}" for n in bad))

    def _check_types(self) -> None:
        """Every field (a subclass's too) against its annotation, before any value check compares it, so that
        ``max_epochs="two"`` is named with the type it needs instead of failing as a bare ``TypeError`` later."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not _conforms(value, _field_types(type(self))[f.name]):
                raise TypeError(f"invalid {type(self).__name__}: {f.name}={value!r}: expected {f.type}, got "
                                f"{type(value).__name__}")

    def _choices(self) -> dict[str, bool]:
        """For :meth:`_check`: each ``Literal`` field holds one of its members (the type check saw only the type)."""
        hints = _field_types(type(self))
        return {f.name: getattr(self, f.name) in typing.get_args(hints[f.name]) for f in dataclasses.fields(self)
                if typing.get_origin(hints[f.name]) is typing.Literal}

    def to_dict(self) -> dict[str, Any]:
        """The settings as saved (``query_groups`` is data, read again from the dataset, so it is left out)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "query_groups"}

    @classmethod
    def from_dict(cls: type[C], values: dict[str, Any], source: str = "config") -> C:
        """Tolerant: keys this version does not know are dropped with a warning naming ``source``."""
        return dataclass_from_dict(cls, values, source)

    @classmethod
    def fit_part(cls, config: "FitConfig") -> "FitConfig":
        """Only the shared fields of ``config`` (e.g. of an :class:`SMECSettings`), for the baselines."""
        return FitConfig(**{f.name: getattr(config, f.name) for f in dataclasses.fields(FitConfig)})

    def save(self, path: str | Path) -> None:
        atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls: type[C], path: str | Path) -> C:
        return cls.from_dict(json.loads(Path(path).read_text()), source=str(path))


@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    """The resolved annotations of a settings class (its fields are declared as strings)."""
    return typing.get_type_hints(cls)


def _conforms(value: Any, hint: Any) -> bool:
    """Whether ``value`` has the annotated type. Lenient where JSON and numpy are: an int is a float, a list and a
    tuple are both sequences, numpy scalars count as numbers; a ``Literal`` only needs its members' type (which
    member is a value check)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_conforms(value, arg) for arg in args)
    if origin is typing.Literal:
        return isinstance(value, tuple({type(arg) for arg in args}))
    if origin in (list, tuple):
        return isinstance(value, (list, tuple)) and all(_conforms(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, Mapping) and all(_conforms(k, args[0]) and _conforms(v, args[1])
                                                  for k, v in value.items())
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint in (int, float):
        number = numbers.Integral if hint is int else numbers.Real
        return isinstance(value, number) and not isinstance(value, bool)
    return isinstance(value, hint)
