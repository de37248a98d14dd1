"""CSR, Contrastive Sparse Representation (Wen et al., 2025, "Beyond Matryoshka"), from Sentence-Transformers' parts.

CSR trains a sparse autoencoder on a *frozen* encoder: ``z = TopK(ReLU(W (x - b_pre) + b_lat))``, decoded by
the tied transpose, with a reconstruction loss plus a contrastive loss on the sparse codes. Here:

* the head is ST 6.2's :class:`~sentence_transformers.sparse_encoder.modules.SparseAutoEncoder`, wrapped as a
  one-module :class:`~sentence_transformers.sparse_encoder.SparseEncoder` fed the cached vectors as
  ``{"sentence_embedding": x}`` (so a fitted head is a real SparseEncoder module that can follow the encoder);
* the loss is ST's :class:`~sentence_transformers.sparse_encoder.losses.CSRLoss` itself: its
  ``CSRReconstructionLoss`` (L_k + L_4k / 8 + beta * L_aux, with ST's ``beta`` = 0.1) on both columns, plus
  ``gamma`` times its main loss. The main loss is CSR's InfoNCE (ST's default is
  ``SparseMultipleNegativesRankingLoss``), adapted to the shared batches by :func:`graded_info_nce`: ST's MNRL
  wants one positive column per query, the shared :class:`~smec_hf.data.examples.Batch` gives unique candidates
  (in-batch positives + mined hard negatives) with graded labels, so each relevant candidate is scored against
  the query's non-relevant candidates (the other relevant ones are not counted as negatives). With one relevant
  candidate per query it equals MNRL's ``query_to_doc`` loss (``tests/test_csr.py`` checks this against ST).
* similarity: cosine at the package's ``similarity_scale`` (temperature 0.05), not ST's dot product at scale 1.
  The package retrieves by cosine, and :meth:`CSRCompressor.transform` returns L2-normalised codes, so cosine
  and dot product rank identically and normalising costs no bytes (a code is stored already scaled).

Sizes are matched to the dense sizes by bytes (:func:`active_dims_for_dense`): a dense ``k``-dim float32 vector
is ``4k`` bytes, a sparse one costs a float32 value and an index (2 bytes while ``hidden_dim <= 65536``) per
active dimension, so dense 384 / 256 / 128 / 64 / 32 buy 256 / 170 / 85 / 42 / 21 active dimensions.
``dims`` stays the dense path, like every other method, so the report's columns line up.

One head per size (``per_size=True``, the default) trains its own ``k``, as CSR does, and is early-stopped on its
own held-out nDCG@10; ``per_size=False`` trains one head at the largest ``k`` and keeps the top-``k`` activations
(ST's ``max_active_dims``) at smaller sizes, early-stopped on the mean over the sizes. On SciFact with MiniLM
(seed 0, the shared lr 3e-3) both reach held-out nDCG@10 0.877 at 384, but at 32 the per-size head gets 0.794
against 0.738 for the truncated one, so per-size is the default. It costs one head per size: on the 2-core
machine a head took about 4.5 min (ST's module decodes the top-k, top-4k and auxiliary codes densely, ~1 s a
step), the single head 6 min. Test nDCG@10 in the same runs (300 test queries): per-size 0.807 / 0.705 at
384 / 32; the truncated head 0.811 / 0.803 / 0.779 / 0.744 / 0.690 at 384 / 256 / 128 / 64 / 32; PCA 0.638 /
0.637 / 0.611 / 0.540 / 0.453 (the frozen encoder: 0.645).
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from sentence_transformers.sparse_encoder import SparseEncoder
from sentence_transformers.sparse_encoder.losses import CSRLoss
from sentence_transformers.sparse_encoder.modules import SparseAutoEncoder
from torch import nn

from ..core.config import FitConfig
from ..core.types import Embeddings, Qrels, check_dim
from ..data.examples import Batch, TrainingExamples
from ..engine.held_out import held_out_ndcg
from ..engine.loop import Schedule
from ..engine.losses import cosine_matrix
from .adaptors import fit_baseline, ranking_batches, start_fit

DENSE_VALUE_BYTES = 4     # a dense float32 coordinate
SPARSE_VALUE_BYTES = 4    # a sparse float32 value
MAX_UINT16_INDEX = 65536  # up to this many hidden dimensions an index fits in 2 bytes


def index_bytes(hidden_dim: int) -> int:
    """Bytes of one stored index into a ``hidden_dim``-wide code: uint16 while it fits, else uint32."""
    if hidden_dim < 1:
        raise ValueError(f"hidden_dim must be >= 1, got {hidden_dim}")
    return 2 if hidden_dim <= MAX_UINT16_INDEX else 4


def sparse_vector_bytes(active: int, hidden_dim: int) -> int:
    """Storage of a sparse vector with ``active`` nonzeros: (value + index) bytes per active dimension."""
    return active * (SPARSE_VALUE_BYTES + index_bytes(hidden_dim))


def active_dims_for_dense(dim: int, hidden_dim: int) -> int:
    """The most active dimensions a sparse code may keep within the bytes of a dense ``dim``-dim float32 vector:
    ``floor(4 * dim / (4 + index_bytes))``, e.g. ``floor(4k / 6)`` for ``hidden_dim <= 65536``."""
    if dim < 1:
        raise ValueError(f"dim must be >= 1, got {dim}")
    return (DENSE_VALUE_BYTES * dim) // (SPARSE_VALUE_BYTES + index_bytes(hidden_dim))


def graded_info_nce(queries: torch.Tensor, docs: torch.Tensor, labels: torch.Tensor, scale: float) -> torch.Tensor:
    """InfoNCE over a batch's candidates with graded labels: ``mean over relevant (i, j), weighted by y_ij, of
    -log(exp(s_ij) / (exp(s_ij) + sum over k with y_ik = 0 of exp(s_ik)))``, ``s = scale * cosine``.

    ``queries [B, d]``, ``docs [M, d]``, ``labels [B, M]`` (0 = not relevant). Mirrors ST's
    ``MultipleNegativesRankingLoss.compute_loss_from_embeddings`` (``query_to_doc``, joint partition:
    ``-(positive_scores - logsumexp(scores)).mean()``), with every relevant candidate as a positive and none of
    them as another one's negative.
    """
    sims = scale * cosine_matrix(queries, docs)
    relevant = labels > 0
    negatives = torch.logsumexp(sims.masked_fill(relevant, -torch.inf), dim=1, keepdim=True)   # [B, 1]
    nll = torch.logaddexp(sims, negatives) - sims
    weight = labels.clamp_min(0)
    return (weight * nll).sum() / weight.sum().clamp_min(1e-12)


class GradedInfoNCE(nn.Module):
    """:func:`graded_info_nce` in the shape :class:`CSRLoss` calls its main loss with: ``[queries, docs]`` codes
    and the batch's labels."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = scale

    def compute_loss_from_embeddings(self, embeddings: list[torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        queries, docs = embeddings
        return graded_info_nce(queries, docs, labels, self.scale)


def sparse_head(input_dim: int, hidden_dim: int, k: int, k_aux: int) -> SparseEncoder:
    """ST's sparse autoencoder as the only module of a SparseEncoder: cached vectors in, k-sparse codes out."""
    return SparseEncoder(modules=[SparseAutoEncoder(input_dim, hidden_dim, k=k, k_aux=k_aux)], device="cpu")


def encode_codes(model: SparseEncoder, vectors: torch.Tensor, active: int) -> torch.Tensor:
    """L2-normalised top-``active`` codes, through the module's inference path (ST's ``max_active_dims``); the
    normalisation runs outside inference mode, so the result is an ordinary tensor."""
    with torch.inference_mode():
        codes = model({"sentence_embedding": vectors.float()}, max_active_dims=active)["sentence_embedding"]
    return F.normalize(codes, dim=-1)


def _head_settings(head: SparseEncoder) -> tuple[int, int, int, int]:
    module = head[0]
    return module.input_dim, module.hidden_dim, module.k, module.k_aux


class CSRCompressor:
    """A CSR sparse autoencoder on the frozen vectors; ``transform(x, dim)`` gives a ``hidden_dim``-wide code with
    at most :meth:`active_dims` ``(dim)`` nonzeros, the same bytes as a dense ``dim``-dim float32 vector."""

    name = "csr"

    def __init__(self, dims: Sequence[int], config: FitConfig | None = None, schedule: Schedule | None = None, *,
                 hidden_dim: int | None = None, expansion: int = 4, k_aux: int = 512, beta: float = 0.1,
                 gamma: float = 1.0, per_size: bool = True, show_progress_bar: bool = True) -> None:
        """``hidden_dim``: width of the sparse code (default ``expansion`` x the embedding dimension, CSR's and ST's
        4x); ``k_aux``: the auxiliary top-k over dead latents (ST's default 512); ``beta``: weight of ST's L_aux
        (CSRLoss's 0.1); ``gamma``: weight of the contrastive loss (CSRLoss's 1.0); ``per_size``: one head per
        size (default) or one head at the largest size, truncated (measured in the module docstring)."""
        values = {"hidden_dim": hidden_dim, "expansion": expansion, "k_aux": k_aux, "beta": beta, "gamma": gamma}
        ok = {"hidden_dim": hidden_dim is None or hidden_dim >= 1, "expansion": expansion >= 1, "k_aux": k_aux >= 0,
              "beta": beta >= 0, "gamma": gamma > 0}
        bad = [f"{n}={values[n]!r}" for n, good in ok.items() if not good]
        if bad:
            raise ValueError("invalid CSR setting: " + ", ".join(bad))
        self.dims = list(dims)
        if not self.dims or min(self.dims) < 1:
            raise ValueError(f"dims must be positive dense sizes, got {self.dims}")
        self.config = config or FitConfig(dims=self.dims)
        self.schedule = schedule or Schedule()
        self.hidden_dim, self.expansion, self.k_aux = hidden_dim, expansion, k_aux
        self.beta, self.gamma, self.per_size = beta, gamma, per_size
        self.show_progress_bar = show_progress_bar
        if hidden_dim is not None:
            self._check_width(hidden_dim)
        self.heads: dict[int, SparseEncoder] = {}
        self.log: dict = {}

    def _check_width(self, hidden_dim: int) -> None:
        """ST's training path also keeps the top 4k latents (L_4k), so the code must be at least 4x the largest k."""
        k = active_dims_for_dense(max(self.dims), hidden_dim)
        if k < 1:
            raise ValueError(f"dims={self.dims}: dense size {max(self.dims)} buys no active dimension")
        if hidden_dim < 4 * k:
            raise ValueError(f"hidden_dim={hidden_dim} is too small: dense size {max(self.dims)} buys {k} active "
                             f"dimensions and CSR's L_4k needs hidden_dim >= 4 * {k} = {4 * k}")

    def active_dims(self, dim: int) -> int:
        """Active dimensions of the code served for dense size ``dim``."""
        check_dim(self.name, self.dims, dim)
        return active_dims_for_dense(dim, self._width())

    def bytes_per_vector(self, dim: int) -> int:
        """Bytes of one stored code at dense size ``dim`` (at most ``4 * dim``)."""
        return sparse_vector_bytes(self.active_dims(dim), self._width())

    def _width(self) -> int:
        if self.hidden_dim is None:
            raise RuntimeError("CSRCompressor: hidden_dim is set by fit (expansion x the embedding dimension)")
        return self.hidden_dim

    def fit(self, cache: Embeddings, train_qrels: Qrels) -> "CSRCompressor":
        cfg = self.config
        examples = start_fit(cache, train_qrels, cfg, self.dims)
        hidden_dim = self.hidden_dim or self.expansion * cache.dim
        self._check_width(hidden_dim)
        self.hidden_dim = hidden_dim
        if self.per_size:
            for i, dim in enumerate(self.dims):
                torch.manual_seed(cfg.seed + i)
                self.heads[dim], self.log[dim] = self._fit_one(examples, [dim], i, f"{self.name} {dim}-d")
        else:
            head, self.log["joint"] = self._fit_one(examples, self.dims, 0, self.name)
            self.heads = {dim: head for dim in self.dims}
        return self

    def _fit_one(self, examples: TrainingExamples, dims: list[int], index: int,
                 desc: str) -> tuple[SparseEncoder, dict]:
        """One head trained at the largest active count of ``dims``, early-stopped on its mean over ``dims``."""
        cfg = self.config
        k = max(self.active_dims(d) for d in dims)
        head = sparse_head(examples.cache.dim, self._width(), k, min(self.k_aux, self._width()))
        loss = CSRLoss(head, loss=GradedInfoNCE(cfg.similarity_scale), beta=self.beta, gamma=self.gamma)

        def loss_fn(batch: Batch, generator: torch.Generator) -> torch.Tensor:
            columns = [{"sentence_embedding": batch.queries}, {"sentence_embedding": batch.docs}]
            return sum(loss(columns, batch.labels).values())

        optimizer = torch.optim.Adam(head.parameters(), lr=cfg.lr)
        log = fit_baseline(head, optimizer, ranking_batches(examples, cfg), loss_fn,
                           self._held_out_score(examples, head, dims), cfg, self.schedule, desc=desc,
                           show_progress_bar=self.show_progress_bar, seed_offset=index)
        log.update(active_dims={d: self.active_dims(d) for d in dims}, trained_k=k)
        return head.requires_grad_(False).eval(), log

    def _held_out_score(self, examples: TrainingExamples, head: SparseEncoder,
                        dims: list[int]) -> Callable[[], tuple[float, dict]]:
        """Mean held-out nDCG@10 over ``dims``, each at its own active count (the engine's held-out scorer on the
        whole code, which is why its only "dim" is the code width)."""
        width = self._width()

        def score() -> tuple[float, dict]:
            by_dim = {d: held_out_ndcg(examples, lambda x, a=self.active_dims(d): encode_codes(head, x, a),
                                       [width])[width] for d in dims}
            value = float(np.mean(list(by_dim.values())))
            return value, {"held_out_ndcg@10": value}

        return score

    def __getstate__(self) -> dict:
        """Pickle the heads as their settings and weights (ST's module holds a local function, which pickle refuses),
        so a fitted CSR comes back from a worker process."""
        state = self.__dict__.copy()
        state["heads"] = {dim: (_head_settings(head), head.state_dict()) for dim, head in self.heads.items()}
        return state

    def __setstate__(self, state: dict) -> None:
        built: dict[int, SparseEncoder] = {}
        for dim, (settings, weights) in state["heads"].items():
            head = sparse_head(*settings)
            head.load_state_dict(weights)
            built[dim] = head.requires_grad_(False).eval()
        state["heads"] = built
        self.__dict__.update(state)

    def transform(self, vectors: np.ndarray, dim: int) -> np.ndarray:
        """``[n, hidden_dim]`` float32 L2-normalised, nonnegative codes with at most ``active_dims(dim)`` nonzeros
        per row (dense arrays, so the package's cosine retrieval scores them as they are)."""
        check_dim(self.name, self.dims, dim)
        if dim not in self.heads:
            raise RuntimeError("CSRCompressor.transform called before fit")
        x = torch.from_numpy(np.array(vectors, dtype=np.float32))
        return encode_codes(self.heads[dim], x, self.active_dims(dim)).numpy()
