"""``SMECConfig``: the root ``config.json`` of an exported SMEC repository.

This file is copied verbatim to the repository root, where ``AutoConfig`` loads it through ``auto_map`` with
``trust_remote_code=True``. It must therefore import nothing from ``smec_hf``.

Besides describing :class:`SMECModel`, the root config is the file serving engines read: vLLM and SGLang accept
``dimensions=`` only when ``is_matryoshka`` is true and the value is listed in ``matryoshka_dimensions``.
"""
from __future__ import annotations

from itertools import pairwise
from typing import Any

from transformers import AutoConfig, PretrainedConfig

POOLING_MODES = ("mean", "cls", "max", "lasttoken")


class SMECConfig(PretrainedConfig):
    """Base encoder config + pooling + the folded SMEC head, and where the repository keeps their weights.

    Args:
        encoder_config: the base encoder's transformers config (a config object or its dict).
        dimension_path: SMEC's stage path ``D0 > D1 > ... > DS``; ``D0`` is the encoder's embedding size.
        matryoshka_dimensions: the output sizes a caller may truncate to (defaults to ``dimension_path``).
        is_matryoshka: always true for SMEC; a flag for serving engines.
        projection_dim: size of the full output (``D0``); Sentence-Transformers reads this name too.
        pooling_mode: how token embeddings become one vector, as the base Sentence-Transformers ``Pooling``.
        normalize_input: whether the base pipeline L2-normalises the pooled vector before the SMEC head.
        max_seq_length: the base pipeline's token limit, for tokenising exactly as Sentence-Transformers does.
        encoder_subfolder / head_subfolder: folders holding ``model.safetensors`` of the encoder and of the
            head (the Sentence-Transformers ``Transformer`` and ``Dense`` module folders).
    """

    model_type = "smec"
    sub_configs = {"encoder_config": AutoConfig}

    def __init__(
        self,
        encoder_config: PretrainedConfig | dict[str, Any] | None = None,
        dimension_path: list[int] | None = None,
        matryoshka_dimensions: list[int] | None = None,
        is_matryoshka: bool = True,
        projection_dim: int | None = None,
        pooling_mode: str = "mean",
        normalize_input: bool = True,
        max_seq_length: int | None = None,
        encoder_subfolder: str = "0_Transformer",
        head_subfolder: str = "3_Dense",
        **kwargs: Any,
    ) -> None:
        if isinstance(encoder_config, dict):
            encoder_config = AutoConfig.for_model(**encoder_config)
        if pooling_mode not in POOLING_MODES:
            raise ValueError(f"pooling_mode must be one of {POOLING_MODES}, got {pooling_mode!r}")
        if dimension_path is not None:
            dimension_path = [int(d) for d in dimension_path]
            if any(b >= a for a, b in pairwise(dimension_path)) or dimension_path[-1] < 1:
                raise ValueError(f"dimension_path must be strictly decreasing positive sizes, got {dimension_path}")
            matryoshka_dimensions = list(matryoshka_dimensions or dimension_path)
            projection_dim = projection_dim or dimension_path[0]
            if max(matryoshka_dimensions) > projection_dim:
                raise ValueError(
                    f"matryoshka_dimensions {matryoshka_dimensions} exceed the output size {projection_dim}")
        self.encoder_config = encoder_config
        self.dimension_path = dimension_path
        self.matryoshka_dimensions = matryoshka_dimensions
        self.is_matryoshka = is_matryoshka
        self.projection_dim = projection_dim
        self.pooling_mode = pooling_mode
        self.normalize_input = normalize_input
        self.max_seq_length = max_seq_length
        self.encoder_subfolder = encoder_subfolder
        self.head_subfolder = head_subfolder
        super().__init__(**kwargs)
