"""SMEC behind the shared :class:`~smec_hf.core.types.Compressor` interface."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..core.types import Embeddings, Qrels, check_dim
from .chain import SMECChain
from .settings import SMECSettings


class SMECCompressor:
    """Train (``fit``) and apply (``transform``) an SMEC chain; inference uses the folded affine map, or for a
    non-linear chain (residual-MLP stage 1) the chain's exported ``Dense`` layers."""

    def __init__(self, settings: SMECSettings | None = None, output_dir: str | Path | None = None,
                 show_progress_bar: bool = True, name: str = "smec") -> None:
        self.name = name
        self.settings = settings or SMECSettings()
        self.output_dir = output_dir
        self.show_progress_bar = show_progress_bar
        self.chain: SMECChain | None = None
        self.head_choice: dict | None = None    # what the do-no-harm check kept, and why (see smec.no_harm)
        self.timings: dict[str, float] = {}      # the last fit's seconds by phase (mine, held-out scoring, ...)
        self.dims: list[int] = list(self.settings.dims or [])

    @classmethod
    def from_chain(cls, chain: SMECChain, name: str = "smec") -> "SMECCompressor":
        compressor = cls(SMECSettings(dims=chain.dims), name=name)
        compressor._set_chain(chain)
        return compressor

    def fit(self, cache: Embeddings, train_qrels: Qrels) -> "SMECCompressor":
        from .trainer import SMECTrainer   # deferred: the trainer pulls in Accelerate

        if self.output_dir is None:
            raise ValueError("SMECCompressor.fit needs an output_dir for checkpoints and the trained head")
        trainer = SMECTrainer(self.settings, cache, train_qrels, self.output_dir, self.show_progress_bar)
        self._set_chain(trainer.train())
        self.head_choice, self.timings = trainer.head_choice, dict(trainer.timings)
        return self

    def _set_chain(self, chain: SMECChain) -> None:
        self.chain = chain.eval()
        self.dims = list(chain.dims)
        if chain.is_linear:
            self.weight, self.bias = chain.fold()
            self.layers = None
        else:
            self.weight = self.bias = None
            self.layers = chain.dense_layers()

    def __getstate__(self) -> dict:
        """Pickle the chain as its config and weights, so a fitted compressor can come back from a worker process."""
        state = self.__dict__.copy()
        if self.chain is not None:
            state["chain"] = (self.chain.config_dict(), self.chain.state_dict())
        return state

    def __setstate__(self, state: dict) -> None:
        if state.get("chain") is not None:
            state["chain"] = SMECChain.from_state(*state["chain"])
        self.__dict__.update(state)

    def transform(self, vectors: np.ndarray, dim: int) -> np.ndarray:
        check_dim(self.name, self.dims, dim)
        x = torch.from_numpy(np.array(vectors, dtype=np.float32))   # a copy: cached rows may be read-only
        if self.layers is None:
            return (x @ self.weight[:dim].T + self.bias[:dim]).numpy()
        (inner, _), (outer, _) = self.layers                       # Dense(ReLU), then Dense(identity)
        return (torch.relu(x @ inner.T) @ outer[:dim].T).numpy()
