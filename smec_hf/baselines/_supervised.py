"""What the supervised baselines share with SMEC's trainer: the examples, the split and early stopping.

Every supervised method is trained on the *same* fit/held-out division of the train queries
(:func:`~smec_hf.data.beir.held_out_split` with SMEC's fraction and seed), on the same
:class:`~smec_hf.method.batches.RankingExamples` batches (in-batch positives + mined hard negatives,
graded labels) and with the same loss scale, so differences in the report come from the methods.
The test split is never seen here.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .pca import PCACompressor
from ..config import SMECTrainingConfig
from ..evaluation.retrieval import evaluate_retrieval, rows_as_tensor
from ..method.batches import Batch, RankingExamples, split_train_examples

if TYPE_CHECKING:
    from ..data.cache import EmbeddingCache


@dataclass
class Schedule:
    """The baselines' epoch budget (an epoch = one pass over the fit pairs, 7 steps on SciFact).

    A baseline trains its whole head in one go, so it gets its own budget rather than SMEC's per-stage one.
    On SciFact with MiniLM (lr 1e-3) the joint head's held-out nDCG@10 was still rising at epoch 40 and
    peaked near epoch 190 (mean over dims 0.769 -> 0.835); with patience 10 some seeds stopped on a noisy
    plateau that patience 30 got past. Matryoshka-Adaptor's paper allows 5,000 steps with patience 500.
    """

    max_epochs: int = 300
    patience: int = 30

    def __post_init__(self) -> None:
        if self.max_epochs < 1 or self.patience < 1:
            raise ValueError(f"max_epochs and patience must be >= 1, got {self.max_epochs} and {self.patience}")


@dataclass
class RankingSetup:
    """The fit / held-out ranking examples built from the train qrels, exactly as SMEC's trainer builds them."""

    cache: "EmbeddingCache"
    fit: RankingExamples
    held: RankingExamples
    qrels: dict[str, dict[str, int]]

    @classmethod
    def build(cls, cache: "EmbeddingCache", train_qrels: Mapping[str, Mapping[str, int]],
              config: SMECTrainingConfig) -> "RankingSetup":
        fit, held, qrels = split_train_examples(cache, train_qrels, config.held_out_fraction, config.seed,
                                                config.hard_negative_pool)
        return cls(cache, fit, held, qrels)

    def epoch_batches(self, config: SMECTrainingConfig, generator: torch.Generator) -> Iterator[Batch]:
        """One shuffled pass over the fit pairs in SMEC's batches (``batch_size`` pairs + hard negatives)."""
        order = torch.randperm(len(self.fit.pairs), generator=generator)
        for start in range(0, len(order), config.batch_size):
            yield self.fit.batch(order[start:start + config.batch_size], config.hard_negatives, generator)

    @torch.no_grad()
    def held_out_mean(self, encode: Callable[[torch.Tensor], torch.Tensor], dims: Sequence[int],
                      chunk_size: int = 65536) -> float:
        """Mean held-out nDCG@10 over ``dims`` of a nested method (its k-dim output = prefix of ``encode``'s):
        the early-stopping score of a model serving every dim. The corpus is encoded once, not once per dim."""
        corpus = self.cache.corpus
        docs = torch.cat([encode(rows_as_tensor(corpus, slice(s, s + chunk_size)))
                          for s in range(0, len(corpus), chunk_size)])
        queries = encode(self.held.queries)
        return float(np.mean([evaluate_retrieval(self.held.query_ids, queries[:, :k], self.cache.corpus_ids,
                                                 docs[:, :k], self.qrels) for k in dims]))


def start_fit(cache: "EmbeddingCache", train_qrels: Mapping[str, Mapping[str, int]], config: SMECTrainingConfig,
              dims: Sequence[int]) -> RankingSetup:
    """The common start of a supervised baseline's ``fit``: check ``dims`` against the cache, seed torch's
    global RNG (layer initialisation; a worker process may have trained another method before) and build
    the shared examples."""
    if dims[0] != cache.dim:
        raise ValueError(f"dims must start at the embedding dimension {cache.dim}, got {list(dims)}")
    torch.manual_seed(config.seed)
    return RankingSetup.build(cache, train_qrels, config)


def pca_basis(cache: "EmbeddingCache") -> tuple[torch.Tensor, torch.Tensor]:
    """The centred corpus PCA as an affine map ``z = x @ weight.T + bias`` (rows by explained variance)."""
    pca = PCACompressor([cache.dim]).fit(cache)
    weight = torch.as_tensor(pca.components)
    return weight, -weight @ torch.as_tensor(pca.mean)


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


def make_basis(cache: "EmbeddingCache", kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    if kind == "pca":
        return pca_basis(cache)
    if kind == "identity":
        return torch.eye(cache.dim), torch.zeros(cache.dim)
    raise ValueError(f"basis must be 'pca' or 'identity', got {kind!r}")


def train_early_stopped(module: nn.Module, optimizer: torch.optim.Optimizer,
                        epoch_steps: Callable[[torch.Generator], Iterable[Any]],
                        loss_fn: Callable[[Any, torch.Generator], torch.Tensor], score_fn: Callable[[], float],
                        config: SMECTrainingConfig, schedule: Schedule, desc: str,
                        show_progress_bar: bool = True, seed_offset: int = 0) -> dict:
    """Epochs of ``loss_fn`` over ``epoch_steps``; after each, ``score_fn()`` (held-out nDCG@10); keep the best.

    Stops after ``schedule.patience`` epochs without improvement (at most ``schedule.max_epochs``), restores
    the best weights into ``module`` and returns the history. The start point is scored too (epoch -1), so
    a method that cannot improve on its initialisation returns it unchanged.
    """
    generator = torch.Generator().manual_seed(config.seed + seed_offset)
    module.eval()
    best_score, best_epoch, bad = score_fn(), -1, 0
    best_state = copy.deepcopy(module.state_dict())
    history = [{"epoch": -1, "held_out_ndcg@10": best_score}]
    bar = tqdm(range(schedule.max_epochs), desc=desc, disable=not show_progress_bar, leave=False)
    for epoch in bar:
        module.train()
        total, steps = 0.0, 0
        for step in epoch_steps(generator):
            loss = loss_fn(step, generator)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total, steps = total + float(loss.detach()), steps + 1
        module.eval()
        score = score_fn()
        history.append({"epoch": epoch, "loss": total / max(steps, 1), "held_out_ndcg@10": score})
        if score > best_score + 1e-6:
            best_score, best_epoch, bad = score, epoch, 0
            best_state = copy.deepcopy(module.state_dict())
        else:
            bad += 1
        bar.set_postfix(loss=f"{total / max(steps, 1):.4f}", ndcg=f"{score:.4f}", best=f"{best_score:.4f}")
        if bad >= schedule.patience:
            break
    bar.close()
    module.load_state_dict(best_state)
    module.eval()
    return {"best_epoch": best_epoch, "best_held_out_ndcg@10": best_score, "history": history}
