"""``SMECModule``: the trainable SMEC chain as a Sentence-Transformers module.

Use it to train or inspect SMEC inside a ``SentenceTransformer`` pipeline (it keeps the stages and ADS logits).
It is not part of released models: a class outside ``sentence_transformers`` needs ``trust_remote_code=True`` to
load, so ``smec export`` ships :meth:`SMECModule.to_dense_layers`, the equivalent built-in ``Dense`` layers (one for a
linear chain, two for a residual-MLP stage 1), instead.
"""
from __future__ import annotations

from typing import Any

import torch
from safetensors.torch import load_file, save_file
from sentence_transformers.base.modules import Dense, Module
from sentence_transformers.util import import_from_string
from torch import nn

from ..smec.chain import SMECChain, Stage1

WEIGHTS_NAME = "model.safetensors"


class SMECModule(Module):
    """Maps ``features["sentence_embedding"]`` (``D0``-dim) through the SMEC chain; ``[:, :k]`` is the k-dim output.

    Weights are saved as safetensors only (never pickles).
    """

    config_keys = ["dims", "later_stage_map", "use_ads", "ads_temperature", "bias", "stage1", "hidden"]

    def __init__(self, dims: list[int], later_stage_map: str = "orthogonal", use_ads: bool | list[bool] = True,
                 ads_temperature: float = 1.0, bias: bool = False, stage1: Stage1 = "linear", hidden: int = 0) -> None:
        super().__init__()
        self.chain = SMECChain(dims, later_stage_map=later_stage_map, use_ads=use_ads,
                               ads_temperature=ads_temperature, bias=bias, stage1=stage1, hidden=hidden)
        self.dims = self.chain.dims
        self.later_stage_map = later_stage_map
        self.use_ads = use_ads
        self.ads_temperature = ads_temperature
        self.bias = bias
        self.stage1 = stage1
        self.hidden = self.chain.hidden

    @classmethod
    def from_chain(cls, chain: SMECChain) -> SMECModule:
        """Wrap a trained chain (its weights are copied)."""
        module = cls(**chain.config_dict())
        module.chain.load_state_dict(chain.state_dict())
        return module.train(chain.training)

    def forward(self, features: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        features["sentence_embedding"] = self.chain(features["sentence_embedding"])
        return features

    def get_embedding_dimension(self) -> int:
        return self.dims[0]

    def to_dense(self) -> Dense:
        """A linear chain folded into one built-in ``Dense`` (identity activation): same outputs, no custom
        code to load."""
        weight, bias = self.chain.fold()
        return Dense(self.dims[0], self.dims[0], bias=self.bias, activation_function=nn.Identity(),
                     init_weight=nn.Parameter(weight), init_bias=nn.Parameter(bias) if self.bias else None)

    def to_dense_layers(self) -> list[Dense]:
        """The inference chain as built-in ``Dense`` layers applied in order: :meth:`to_dense` for a linear chain
        (a bias included), else :meth:`SMECChain.dense_layers` (bias-free, ``ReLU`` then identity)."""
        if self.chain.is_linear:
            return [self.to_dense()]
        return [Dense(weight.shape[1], weight.shape[0], bias=False, activation_function=import_from_string(name)(),
                      init_weight=nn.Parameter(weight)) for weight, name in self.chain.dense_layers()]

    def save(self, output_path: str, *args: Any, safe_serialization: bool = True, **kwargs: Any) -> None:
        if not safe_serialization:
            raise ValueError("SMECModule saves safetensors only; pickled weights are not supported")
        self.save_config(output_path)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, f"{output_path}/{WEIGHTS_NAME}")

    @classmethod
    def load(cls, model_name_or_path: str, subfolder: str = "", token: bool | str | None = None,
             cache_folder: str | None = None, revision: str | None = None, local_files_only: bool = False,
             **kwargs: Any) -> SMECModule:
        hub = {"subfolder": subfolder, "token": token, "cache_folder": cache_folder, "revision": revision,
               "local_files_only": local_files_only}
        module = cls(**cls.load_config(model_name_or_path, **hub))
        weights = cls.load_file_path(model_name_or_path, WEIGHTS_NAME, **hub)
        if weights is None:
            raise FileNotFoundError(f"{WEIGHTS_NAME} not found in {model_name_or_path}/{subfolder}")
        module.load_state_dict(load_file(weights))
        return module

    @torch.no_grad()
    def selected_dimensions(self) -> list[list[int]]:
        """For inspection: each stage's ADS selection (indices into its input block), in inference order."""
        return [stage.ads.selected_indices().tolist() if stage.ads is not None else list(range(stage.out_features))
                for stage in self.chain.stages]
