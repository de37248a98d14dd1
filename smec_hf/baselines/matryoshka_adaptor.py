"""Matryoshka-Adaptor (Yoon et al., 2024): one residual MLP, losses at every prefix jointly.

Two stages, as in the paper:

1. unsupervised: ``L_topk + alpha * L_pair + beta * L_rec`` on corpus embeddings only (similarity to each
   document's nearest neighbours, similarity within a batch, and the L1 size of the residual), summed
   over every prefix of the dimension path;
2. supervised: the same plus ``gamma * L_rank`` (the graded pairwise ranking loss, summed over prefixes)
   on SMEC's batches.

Each stage is early-stopped on held-out train queries (mean nDCG@10 over the dims). With no train queries at all
(a corpus-only dataset) only stage 1 runs, early-stopped on the neighbour recall@10 of held-out documents. The
paper's losses are sums; here, like SMEC's, they are means, so the weights do not depend on batch sizes.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..core.config import FitConfig
from ..core.types import Embeddings, Qrels, check_dim
from ..data.examples import Batch, CorpusExamples, probe_documents
from ..engine.loop import Schedule
from ..engine.losses import corpus_structure_loss, graded_ranking_loss
from .adaptors import (BasisAdaptor, ResidualMLP, fit_baseline, make_basis, mean_held_out_ndcg, mean_neighbour_recall,
                       ranking_batches, start_fit)


class MatryoshkaAdaptorCompressor:
    """``x -> z + f(z)`` with ``z`` the input in a fixed basis; the k-dim embedding is the first k coordinates."""

    name = "matryoshka_adaptor"

    def __init__(self, dims: Sequence[int], config: FitConfig | None = None,
                 schedule: Schedule | None = None, *, unsupervised_schedule: Schedule | None = None,
                 hidden: int = 512, alpha: float = 1.0, beta: float = 1.0, gamma: float = 100.0, top_k: int = 10,
                 basis: str = "pca", max_corpus_rows: int = 50_000, show_progress_bar: bool = True) -> None:
        """``alpha``, ``beta``: weights of ``L_pair`` and ``L_rec`` (the paper's 1.0); ``gamma``: weight of ``L_rank``,
        chosen from {1, 10, 100} on held-out SciFact train queries with MiniLM (mean nDCG@10 over the dims
        0.757 / 0.844 / 0.849; the first two at lr 1e-3, the first with patience 10). Our losses are means and
        the paper's sums: a step has ~150k ranking triples against ~1.3k neighbour pairs, so the paper's 1.0
        amounts to about 100 here. ``top_k``: neighbours per document in ``L_topk``; ``max_corpus_rows``: the
        corpus sample of the unsupervised terms (paper: 50,000); ``basis``: "pca" (chosen on held-out queries:
        0.757 against 0.732 for "identity" at gamma 1) or "identity", see
        :class:`~smec_hf.baselines.adaptors.BasisAdaptor`; ``unsupervised_schedule``: the unsupervised
        stage's budget in passes over the corpus sample."""
        values = {"hidden": hidden, "alpha": alpha, "beta": beta, "gamma": gamma, "top_k": top_k,
                  "max_corpus_rows": max_corpus_rows}
        ok = {"hidden": hidden >= 1, "alpha": alpha >= 0, "beta": beta >= 0, "gamma": gamma > 0, "top_k": top_k >= 1,
              "max_corpus_rows": max_corpus_rows >= 2}
        bad = [f"{n}={values[n]!r}" for n, good in ok.items() if not good]
        if bad:
            raise ValueError("invalid Matryoshka-Adaptor setting: " + ", ".join(bad))
        self.dims = list(dims)
        self.config = config or FitConfig(dims=self.dims)
        self.schedule = schedule or Schedule()
        self.unsupervised_schedule = unsupervised_schedule or Schedule(max_epochs=50, patience=5)
        self.hidden, self.alpha, self.beta, self.gamma, self.top_k = hidden, alpha, beta, gamma, top_k
        self.basis, self.max_corpus_rows = basis, max_corpus_rows
        self.show_progress_bar = show_progress_bar
        self.adaptor: BasisAdaptor | None = None
        self.log: dict = {}

    def fit(self, cache: Embeddings, train_qrels: Qrels) -> "MatryoshkaAdaptorCompressor":
        cfg = self.config
        labelled = bool(train_qrels)          # no train queries at all: the unsupervised stage alone
        examples = start_fit(cache, train_qrels, cfg, self.dims) if labelled else None
        torch.manual_seed(cfg.seed)             # the MLP's initialisation (start_fit seeded it the same way)
        adaptor = BasisAdaptor(ResidualMLP(cache.dim, self.hidden), *make_basis(cache, self.basis))
        corpus = self.corpus_sample(cache, labelled)

        def unsupervised(rows: torch.Tensor) -> torch.Tensor:
            batch = corpus.batch(rows)
            x, nb = batch.docs, batch.neighbours                                # [B, D], [B, K, D]
            z = adaptor.project(torch.cat([x, nb.reshape(-1, x.shape[1])]))
            residual = adaptor.mlp.residual(z)
            out = z + residual
            a, a_nb = out[: len(x)], out[len(x):].reshape(len(x), nb.shape[1], -1)
            return corpus_structure_loss(x, nb, a, a_nb, self.dims, self.alpha) + self.beta * residual.abs().mean()

        def supervised(batch: Batch, generator: torch.Generator) -> torch.Tensor:
            rows = torch.randint(len(corpus), (cfg.batch_size,), generator=generator)
            q, d = adaptor(batch.queries), adaptor(batch.docs)
            rank = sum(graded_ranking_loss(q[:, :k], d[:, :k], batch.labels, cfg.similarity_scale) for k in self.dims)
            return self.gamma * rank + unsupervised(rows)

        score = (mean_held_out_ndcg(examples, adaptor, self.dims) if labelled
                 else mean_neighbour_recall(cache, corpus.held_ids, adaptor, self.dims))
        optimizer = torch.optim.Adam(adaptor.parameters(), lr=cfg.lr)
        self.log["unsupervised"] = fit_baseline(
            adaptor, optimizer, lambda g: corpus.epoch_rows(cfg.batch_size, g), lambda rows, g: unsupervised(rows),
            score, cfg, self.unsupervised_schedule, desc=f"{self.name} (unsupervised)",
            show_progress_bar=self.show_progress_bar)
        if labelled:
            optimizer = torch.optim.Adam(adaptor.parameters(), lr=cfg.lr)
            self.log["supervised"] = fit_baseline(
                adaptor, optimizer, ranking_batches(examples, cfg), supervised, score, cfg, self.schedule,
                desc=f"{self.name} (supervised)", show_progress_bar=self.show_progress_bar, seed_offset=1)
        self.adaptor = adaptor.requires_grad_(False)
        return self

    def corpus_sample(self, cache: Embeddings, labelled: bool = True) -> CorpusExamples:
        """At most ``max_corpus_rows`` documents and each one's ``top_k`` nearest others among them (frozen cosine).

        Without labels, the report's probe documents are left out and a held-out share of the rest decides early
        stopping (by neighbour recall); with labels every document may be used, held-out queries decide.
        """
        if labelled:
            return CorpusExamples.build(cache, 0.0, self.config.seed, self.top_k, self.max_corpus_rows)
        return CorpusExamples.build(cache, self.config.held_out_fraction, self.config.seed, self.top_k,
                                    self.max_corpus_rows, exclude=probe_documents(cache.corpus_ids))

    def transform(self, vectors: np.ndarray, dim: int) -> np.ndarray:
        check_dim(self.name, self.dims, dim)
        if self.adaptor is None:
            raise RuntimeError("MatryoshkaAdaptorCompressor.transform called before fit")
        with torch.no_grad():
            return self.adaptor(torch.from_numpy(np.array(vectors, dtype=np.float32)))[:, :dim].numpy()
