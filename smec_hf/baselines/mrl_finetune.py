"""``mrl_finetune``: the base encoder itself fine-tuned at the run's dims with Sentence-Transformers' trainer and
``MatryoshkaLoss(MultipleNegativesRankingLoss)``, as a LoRA adapter by default (full fine-tuning as an option).

Every other method maps the frozen vectors; this one changes the encoder, so it is built with the texts and the
base model (:func:`~smec_hf.engine.encoder_finetune.tune_encoder`: what it trains on, how it stops, how a rerun
reuses it), and its ``transform`` is a look-up: ``fit`` re-encodes the dataset's corpus and queries with the tuned
encoder into its own embedding cache, and ``transform(x, k)`` is the first ``k`` tuned coordinates of the text whose
*base* vector is ``x``. So every scorer that reads the base cache (MTEB, the precision grid, neighbour recall) scores
the tuned encoder's own vectors.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ..core.config import FitConfig
from ..core.types import Embeddings, Qrels, check_dim
from ..data.beir import RetrievalData
from ..engine.encoder_finetune import FinetuneSettings, TunedVectors, require_texts, tune_encoder
from .adaptors import start_fit


class MRLFinetuneCompressor:
    """The base encoder fine-tuned at ``dims`` (see the module docstring); after ``fit``, ``encoder_dir`` holds the
    tuned encoder and ``encoder_record`` what the report shows about its training."""

    name = "mrl_finetune"

    def __init__(self, dims: Sequence[int], config: FitConfig, data: RetrievalData | None, base_model: str | None,
                 run_dir: str | Path, settings: FinetuneSettings | None = None, *, trust_remote_code: bool = False,
                 show_progress_bar: bool = True) -> None:
        self.dims, self.config, self.data, self.base_model = list(dims), config, data, base_model
        self.run_dir, self.settings = Path(run_dir), settings or FinetuneSettings()
        self.trust_remote_code, self.show_progress_bar = trust_remote_code, show_progress_bar
        self.encoder_dir: Path | None = None
        self.encoder_record: dict = {}
        self.tuned: TunedVectors | None = None

    def fit(self, cache: Embeddings, train_qrels: Qrels) -> "MRLFinetuneCompressor":
        require_texts(self.name, self.data, self.base_model)
        examples = start_fit(cache, train_qrels, self.config, self.dims)
        self.encoder_dir, self.encoder_record, tuned = tune_encoder(
            self.base_model, self.data, examples, self.dims, self.settings, scale=self.config.similarity_scale,
            seed=self.config.seed, run_dir=self.run_dir, trust_remote_code=self.trust_remote_code,
            show_progress_bar=self.show_progress_bar)
        self.tuned = TunedVectors(cache, tuned, self.name)
        return self

    def transform(self, vectors: np.ndarray, dim: int) -> np.ndarray:
        check_dim(self.name, self.dims, dim)
        if self.tuned is None:
            raise RuntimeError("MRLFinetuneCompressor.transform called before fit")
        return self.tuned(vectors)[:, :dim]
