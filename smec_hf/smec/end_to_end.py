"""``smec_lora``: SMEC with the encoder in the schedule: a LoRA adapter on the encoder is the chain's first stage.

SMRL trains the largest level first and freezes it before carving out the smaller ones; the end-to-end method puts
the encoder at the head of that sequence:

- **stage 0, the encoder** (:func:`~smec_hf.engine.encoder_finetune.tune_encoder`): a LoRA adapter trained with
  Sentence-Transformers' ``MultipleNegativesRankingLoss`` at the full size ``D`` only, on the run's fit pairs and
  mined negatives, early-stopped on the held-out train queries; then frozen, and the dataset re-encoded by it;
- **stages 1..S, SMEC** (:class:`~smec_hf.smec.compressor.SMECCompressor`, unchanged): the stage chain, ADS, S-XBM
  (its memory holds the tuned encoder's frozen vectors) and do no harm, on the tuned vectors.

Why not the adapter trained alongside stage 1: every step would then encode its texts through the encoder, and a
SMEC step ranks each query against a few thousand candidates and memory neighbours, which a frozen encoder's
cache makes cheap; a stage 0 of its own costs one fine-tune and one re-encode, and every later stage keeps SMEC's
cost. Both parts resume: the encoder is reused once trained (its record says how), the re-encoding resumes by
chunk, the head's stages from their checkpoints. Exported as one folder: the adapter merged into the encoder, the
head behind it (:func:`~smec_hf.hf.finetuned.export_finetuned`).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from ..core.types import Embeddings, Qrels, check_dim
from ..data.beir import RetrievalData
from ..data.examples import TrainingExamples
from ..engine.encoder_finetune import FinetuneSettings, TunedVectors, require_texts, tune_encoder
from .chain import SMECChain
from .compressor import SMECCompressor
from .settings import SMECSettings

HEAD_DIR = "smec"   # the head's training run, beside the encoder's folders


class SMECLoRACompressor:
    """Stage 0 tunes the encoder, SMEC's stages compress its vectors (see the module docstring). After ``fit``,
    ``encoder_dir`` holds the tuned encoder, ``chain`` the head and ``encoder_record`` the encoder's training."""

    def __init__(self, settings: SMECSettings, data: RetrievalData | None, base_model: str | None,
                 run_dir: str | Path, finetune: FinetuneSettings | None = None, *, trust_remote_code: bool = False,
                 show_progress_bar: bool = True, name: str = "smec_lora") -> None:
        self.name, self.settings, self.data, self.base_model = name, settings, data, base_model
        self.run_dir, self.finetune = Path(run_dir), finetune or FinetuneSettings()
        self.trust_remote_code, self.show_progress_bar = trust_remote_code, show_progress_bar
        self.dims: list[int] = list(settings.dims or [])
        self.encoder_dir: Path | None = None
        self.encoder_record: dict = {}
        self.head: SMECCompressor | None = None
        self.tuned: TunedVectors | None = None

    @property
    def chain(self) -> SMECChain | None:
        return None if self.head is None else self.head.chain

    def fit(self, cache: Embeddings, train_qrels: Qrels) -> "SMECLoRACompressor":
        require_texts(self.name, self.data, self.base_model)
        if not self.dims or self.dims[0] != cache.dim:
            raise ValueError(f"dims must start at the embedding dimension {cache.dim}, got {self.dims}")
        torch.manual_seed(self.settings.seed)
        examples = TrainingExamples.for_config(cache, train_qrels, self.settings)
        self.encoder_dir, self.encoder_record, tuned = tune_encoder(
            self.base_model, self.data, examples, self.dims[:1], self.finetune,
            scale=self.settings.similarity_scale, seed=self.settings.seed, run_dir=self.run_dir,
            trust_remote_code=self.trust_remote_code, show_progress_bar=self.show_progress_bar)
        self.head = SMECCompressor(self.settings, self.run_dir / HEAD_DIR, self.show_progress_bar, name=self.name)
        start = time.perf_counter()
        self.head.fit(tuned, train_qrels)
        self.encoder_record = {**self.encoder_record, "head_s": time.perf_counter() - start}
        self.tuned = TunedVectors(cache, tuned, self.name)
        return self

    def transform(self, vectors: np.ndarray, dim: int) -> np.ndarray:
        check_dim(self.name, self.dims, dim)
        if self.tuned is None or self.head is None:
            raise RuntimeError("SMECLoRACompressor.transform called before fit")
        return self.head.transform(self.tuned(vectors), dim)
