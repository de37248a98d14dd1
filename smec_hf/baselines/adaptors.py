"""What the supervised baselines share: the adaptor shape, its fixed input basis, and how each one is fitted.

Every supervised method is trained on the *same* fit/held-out division of the train queries, on the same
:class:`~smec_hf.data.examples.TrainingExamples` batches (in-batch positives + mined hard negatives, graded
labels), with the same loss scale and the engine's early-stopped loop, so differences in the report come
from the methods. The test split is never seen here.
"""
from __future__ import annotations

import itertools
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from ..core.config import FitConfig
from ..core.pca import fit_pca
from ..core.types import Embeddings, Qrels
from ..data.examples import Batch, TrainingExamples, epoch_pieces
from ..engine.held_out import held_out_ndcg_per_query, held_out_neighbour_recall_per_doc
from ..engine.loop import PER_QUERY, History, Schedule, fit_early_stopped, optimizer_epoch


def start_fit(cache: Embeddings, train_qrels: Qrels, config: FitConfig, dims: Sequence[int]) -> TrainingExamples:
    """The common start of a supervised baseline's ``fit``: check ``dims`` against the cache, seed torch's
    global RNG (layer initialisation; a worker process may have trained another method before) and build
    the shared examples."""
    if dims[0] != cache.dim:
        raise ValueError(f"dims must start at the embedding dimension {cache.dim}, got {list(dims)}")
    torch.manual_seed(config.seed)
    return TrainingExamples.for_config(cache, train_qrels, config)


def mean_held_out_ndcg(examples: TrainingExamples, encode: Callable[[torch.Tensor], torch.Tensor],
                       dims: Sequence[int]) -> Callable[[], tuple[float, dict]]:
    """The early-stopping score of a model serving every dim: mean held-out nDCG@10 over ``dims``."""
    return _mean_over_dims("held_out_ndcg@10", lambda: held_out_ndcg_per_query(examples, encode, dims))


def mean_neighbour_recall(cache: Embeddings, held_ids: Sequence[str], encode: Callable[[torch.Tensor], torch.Tensor],
                          dims: Sequence[int]) -> Callable[[], tuple[float, dict]]:
    """The label-free early-stopping score: mean neighbour recall@10 of held-out documents over ``dims``."""
    return _mean_over_dims("held_out_neighbour_recall@10",
                           lambda: held_out_neighbour_recall_per_doc(cache, held_ids, encode, dims))


def _mean_over_dims(name: str, per_item: Callable[[], dict[int, np.ndarray]]) -> Callable[[], tuple[float, dict]]:
    """A loop score: the mean over dims and items, with each item's mean over dims for the loop's noise-aware choice
    between the start and the trained epochs."""

    def score() -> tuple[float, dict]:
        per_query = np.mean(list(per_item().values()), axis=0)
        value = float(per_query.mean())
        return value, {name: value, PER_QUERY: per_query}

    return score


def fit_baseline(model: nn.Module, optimizer: torch.optim.Optimizer, steps: Callable[[torch.Generator], Iterable],
                 loss_fn: Callable[[object, torch.Generator], torch.Tensor], score: Callable[[], tuple[float, dict]],
                 config: FitConfig, schedule: Schedule, desc: str, show_progress_bar: bool = True,
                 seed_offset: int = 0) -> dict:
    """One run of the engine's early-stopped loop for a baseline; ``steps(generator)`` yields an epoch's steps
    and ``loss_fn(step, generator)`` scores one. Returns the best epoch, its score and the history."""
    generator = torch.Generator().manual_seed(config.seed + seed_offset)
    history = History()
    state = fit_early_stopped(model, optimizer_epoch(optimizer, lambda: steps(generator),
                                                     lambda step: loss_fn(step, generator)),
                              score, schedule, callbacks=[history], desc=desc, show_progress_bar=show_progress_bar)
    return {"best_epoch": state.best_epoch, "best_held_out_ndcg@10": state.best_score, "history": history.records}


def ranking_batches(examples: TrainingExamples, config: FitConfig) -> Callable[[torch.Generator], Iterable[Batch]]:
    """An epoch's steps for :func:`fit_baseline`: one shuffled pass over the fit pairs (or its next piece, see
    ``FitConfig.epoch_pairs``), one generator for both the order and the sampled negatives."""
    pieces = epoch_pieces(len(examples.fit.pairs), config.epoch_pairs)
    if pieces == 1:
        return lambda generator: examples.epoch_batches(config.batch_size, config.hard_negatives, generator, generator)
    epochs, sweep = itertools.count(), {}

    def steps(generator: torch.Generator) -> Iterable[Batch]:
        piece = next(epochs) % pieces
        if piece == 0:      # a new pass: every piece of it takes its slice of one permutation
            sweep["seed"] = int(torch.randint(1 << 62, (1,), generator=generator))
        return examples.epoch_batches(config.batch_size, config.hard_negatives,
                                      torch.Generator().manual_seed(sweep["seed"]), generator, piece=(piece, pieces))

    return steps


def pca_basis(cache: Embeddings) -> tuple[torch.Tensor, torch.Tensor]:
    """The centred corpus PCA as an affine map ``z = x @ weight.T + bias`` (rows by explained variance)."""
    return fit_pca(cache.corpus).affine()


def make_basis(cache: Embeddings, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    if kind == "pca":
        return pca_basis(cache)
    if kind == "identity":
        return torch.eye(cache.dim), torch.zeros(cache.dim)
    raise ValueError(f"basis must be 'pca' or 'identity', got {kind!r}")


class ResidualMLP(nn.Module):
    """``z[:, :out] + up(relu(down(z)))`` with ``up`` zero-initialised, so training starts from ``z[:, :out]``.

    The adaptor shape of Matryoshka-Adaptor and Search-Adaptor (a shallow MLP with a skip connection;
    the papers give no widths, ``hidden`` is ours). ``z`` is the input in a fixed basis (see
    :class:`BasisAdaptor`).
    """

    def __init__(self, dim: int, hidden: int, out: int | None = None) -> None:
        super().__init__()
        self.out = out or dim
        self.down = nn.Linear(dim, hidden)
        self.up = nn.Linear(hidden, self.out)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def residual(self, z: torch.Tensor) -> torch.Tensor:
        return self.up(torch.relu(self.down(z)))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z[:, : self.out] + self.residual(z)


class BasisAdaptor(nn.Module):
    """A residual MLP applied in a fixed basis: ``x -> mlp(x @ basis.T + offset)``.

    With the identity basis this is the papers' adaptor on raw embeddings, which starts from plain
    truncation; with the corpus PCA basis (a fixed rotation after centring) it starts from the PCA
    baseline, the same start SMEC and ``mrl_joint`` get. The basis is chosen on held-out train queries.
    """

    def __init__(self, mlp: ResidualMLP, basis: torch.Tensor, offset: torch.Tensor) -> None:
        super().__init__()
        self.mlp = mlp
        self.register_buffer("basis", basis.float().clone())
        self.register_buffer("offset", offset.float().clone())

    def project(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.basis.T + self.offset

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.project(x))
