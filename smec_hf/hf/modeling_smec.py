"""``SMECModel``: base encoder + pooling + the folded SMEC head as one transformers ``PreTrainedModel``.

This file is copied verbatim to the repository root, where ``AutoModel`` loads it through ``auto_map`` with
``trust_remote_code=True``. It must therefore import nothing from ``smec_hf`` (only its sibling
``configuration_smec``).

Weights are stored once, in the Sentence-Transformers module folders of the same repository (see
``smec_hf/hf/export.py`` for the whole layout): the encoder in ``config.encoder_subfolder`` and the head in
``config.head_subfolder``. The root holds no weights file, so :meth:`SMECModel.from_pretrained` resolves those two
files itself (locally or from the Hub, through ``transformers.utils.cached_file``) and hands them to the regular
transformers loader as a ``state_dict``; ``dtype``, ``device_map`` and ``attn_implementation`` keep working.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModel, PretrainedConfig, PreTrainedModel
from transformers.utils import ModelOutput, cached_file

from .configuration_smec import SMECConfig

WEIGHTS_NAME = "model.safetensors"
CODE_FILES = ("configuration_smec.py", "modeling_smec.py")
AUTO_MAP = {"AutoConfig": "configuration_smec.SMECConfig", "AutoModel": "modeling_smec.SMECModel"}
HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "proxies", "revision", "token")


@dataclass
class SMECOutput(ModelOutput):
    """``sentence_embedding``: the SMEC embedding (first ``truncate_dim`` coordinates if one was requested);
    ``base_embedding``: the base pipeline's embedding that the head compresses."""

    sentence_embedding: torch.Tensor | None = None
    base_embedding: torch.Tensor | None = None


def pool(token_embeddings: torch.Tensor, attention_mask: torch.Tensor, mode: str) -> torch.Tensor:
    """Sentence-Transformers' ``Pooling`` for one mode, on right- or left-padded batches."""
    mask = attention_mask.unsqueeze(-1).to(token_embeddings.dtype)
    if mode == "mean":
        return (token_embeddings * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
    if mode == "max":
        return token_embeddings.masked_fill(mask == 0, float("-inf")).max(dim=1).values
    if mode == "cls":
        first = attention_mask.to(torch.int).argmax(dim=1)
        return token_embeddings[torch.arange(len(first), device=first.device), first]
    if mode == "lasttoken":
        seq_len = attention_mask.shape[1]
        any_token, from_end = attention_mask.flip(1).max(dim=1)
        last = seq_len - 1 - torch.where(any_token == 0, seq_len - 1, from_end)
        return (token_embeddings * mask)[torch.arange(len(last), device=last.device), last]
    raise ValueError(f"unsupported pooling mode {mode!r}")


def save_root_config(config: SMECConfig, directory: str | os.PathLike) -> None:
    """Write the root ``config.json`` with ``auto_map``, and the two code files it points to."""
    config.architectures = ["SMECModel"]
    config.auto_map = dict(AUTO_MAP)
    config.save_pretrained(directory)
    for name in CODE_FILES:
        shutil.copyfile(Path(__file__).with_name(name), Path(directory) / name)


class SMECModel(PreTrainedModel):
    """Encoder -> pooling -> (L2 normalisation) -> SMEC head; ``sentence_embedding[:, :k]`` is the k-dim embedding.

    Tokenise with the tokenizer in ``config.encoder_subfolder``
    (``AutoTokenizer.from_pretrained(repo, subfolder=config.encoder_subfolder)``) and
    ``max_length=config.max_seq_length`` to match Sentence-Transformers exactly.
    """

    config_class = SMECConfig
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _tied_weights_keys: dict[str, str] = {}

    def __init__(self, config: SMECConfig) -> None:
        super().__init__(config)
        if config.encoder_config is None or config.dimension_path is None:
            raise ValueError("SMECConfig needs encoder_config and dimension_path to build a model")
        self.encoder = AutoModel.from_config(config.encoder_config)
        self.head = nn.Linear(config.projection_dim, config.projection_dim)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        """An untrained head is the identity, i.e. the frozen base model; the encoder's weights are always loaded."""
        if module is self.head:
            nn.init.eye_(module.weight)
            nn.init.zeros_(module.bias)

    def check_dimension(self, truncate_dim: int | None) -> None:
        """Reject output sizes SMEC was not trained for: a prefix of another size is not a SMEC embedding."""
        if truncate_dim is not None and truncate_dim not in self.config.matryoshka_dimensions:
            raise ValueError(
                f"truncate_dim={truncate_dim} was not trained; this SMEC model supports "
                f"{sorted(self.config.matryoshka_dimensions, reverse=True)}"
            )

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        truncate_dim: int | None = None,
        **kwargs: Any,
    ) -> SMECOutput:
        self.check_dimension(truncate_dim)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        tokens = self.encoder(input_ids=input_ids, attention_mask=attention_mask, return_dict=True, **kwargs)
        base = pool(tokens.last_hidden_state, attention_mask, self.config.pooling_mode)
        if self.config.normalize_input:
            base = F.normalize(base, p=2, dim=-1)
        embedding = self.head(base)
        if truncate_dim is not None:
            embedding = embedding[:, :truncate_dim]
        return SMECOutput(sentence_embedding=embedding, base_embedding=base)

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> None:
        """Write the root config + code, the encoder to ``encoder_subfolder`` and the head to ``head_subfolder``.

        ``kwargs`` (e.g. ``max_shard_size``) go to the encoder's own ``save_pretrained``.
        """
        if kwargs.pop("push_to_hub", False):
            raise ValueError("use SMECModel.push_to_hub(repo_id) (or `smec push`) to upload")
        directory = Path(save_directory)
        self.encoder.save_pretrained(directory / self.config.encoder_subfolder, **kwargs)
        head_dir = directory / self.config.head_subfolder
        head_dir.mkdir(parents=True, exist_ok=True)
        head_state = {f"linear.{k}": v.detach().contiguous().cpu() for k, v in self.head.state_dict().items()}
        save_file(head_state, str(head_dir / WEIGHTS_NAME))
        save_root_config(self.config, directory)

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike, *model_args: Any, config: SMECConfig | None = None,
        **kwargs: Any,
    ) -> SMECModel:
        """Load from a folder or Hub repo written by :meth:`save_pretrained` or ``smec export``."""
        path = str(pretrained_model_name_or_path)
        subfolder = kwargs.pop("subfolder", "")
        hub = {key: kwargs.pop(key) for key in HUB_KWARGS if key in kwargs}
        if not isinstance(config, PretrainedConfig):  # remote code may hand over another module's SMECConfig class
            config, kwargs = cls.config_class.from_pretrained(
                config or path, subfolder=subfolder, return_unused_kwargs=True, **hub, **kwargs
            )
        state_dict = cls._load_state_dict(path, config, subfolder, hub)
        model = super().from_pretrained(None, *model_args, config=config, state_dict=state_dict, **kwargs)
        model.name_or_path = model.config.name_or_path = path
        return model

    @staticmethod
    def _load_state_dict(path: str, config: SMECConfig, subfolder: str, hub: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The encoder's and the head's safetensors files (local or downloaded), under this model's parameter names."""

        def read(folder: str) -> dict[str, torch.Tensor]:
            return load_file(cached_file(path, WEIGHTS_NAME, subfolder="/".join(p for p in (subfolder, folder) if p),
                                         **hub))

        state = {f"encoder.{k}": v for k, v in read(config.encoder_subfolder).items()}
        state.update({f"head.{k.removeprefix('linear.')}": v for k, v in read(config.head_subfolder).items()})
        return state
