"""``SMECModel``: a Sentence-Transformers folder's whole pipeline (encoder, pooling, ``Dense`` layers including the
SMEC head, ``Normalize``) as one transformers ``PreTrainedModel``.

This file is copied verbatim to the root of an exported model, where ``AutoModel.from_pretrained(repo,
trust_remote_code=True)`` loads it through the root config's ``auto_map``; it imports nothing from ``smec_hf``.
The root ``config.json`` stays the *encoder's* own config (so vLLM, TEI and Sentence-Transformers read it as
usual), and the encoder's weights are the root ``model.safetensors``: they load into ``self.encoder`` through
``base_model_prefix``, with no second copy. The rest of the pipeline is read from the Sentence-Transformers
files beside them (``modules.json``, each module's ``config.json`` and the ``Dense`` weights), so ``SMECModel``
and ``SentenceTransformer`` compute the same vectors. ``forward`` returns a ``BaseModelOutputWithPooling``
whose ``last_hidden_state`` are the encoder's states and whose ``pooler_output`` is the embedding, which also
keeps ``SentenceTransformer(repo, trust_remote_code=True)`` (it loads this class into its ``Transformer``) working.
"""
from __future__ import annotations

import json
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils import cached_file

WEIGHTS_NAME = "model.safetensors"
HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "proxies", "revision", "token", "subfolder")
POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")
LEGACY_POOLING_KEYS = {"pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max",
                       "pooling_mode_mean_tokens": "mean", "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
                       "pooling_mode_weightedmean_tokens": "weightedmean", "pooling_mode_lasttoken": "lasttoken"}
ACTIVATIONS = ("Identity", "Tanh", "ReLU", "GELU", "Sigmoid", "SiLU")


class UnsupportedPipeline(ValueError):
    """The Sentence-Transformers pipeline holds a module ``SMECModel`` cannot reproduce."""


def _read_json(path: str, name: str, hub: dict[str, Any]) -> dict | list | None:
    file = cached_file(path, name, _raise_exceptions_for_missing_entries=False, **hub)
    if file is None:
        return None
    with open(file, encoding="utf-8") as f:
        return json.load(f)


def read_pipeline(path: str, **hub: Any) -> dict:
    """The pipeline a Sentence-Transformers folder (or Hub repo) describes, as plain data.

    ``{"steps": [("pool", {...}) | ("dense", {...}) | ("normalize", {})], "max_seq_length", "prompts",
    "default_prompt_name"}``; raises :class:`UnsupportedPipeline` for anything but Transformer (at the root),
    Pooling, Dense (built-in activations) and Normalize.
    """
    modules = _read_json(path, "modules.json", hub)
    if not modules:
        raise UnsupportedPipeline(f"{path} has no modules.json: not a Sentence-Transformers folder")
    steps: list[tuple[str, dict]] = []
    for index, module in enumerate(sorted(modules, key=lambda m: int(m["idx"]))):
        kind, folder = module["type"].rsplit(".", 1)[-1], module["path"]
        if index == 0:
            if kind != "Transformer" or folder not in ("", "."):
                raise UnsupportedPipeline(f"the first module must be a Transformer at the root, got {kind} in {folder!r}")
            continue
        config = _read_json(path, f"{folder}/config.json", hub) if kind != "Normalize" else {}
        if kind == "Pooling":
            steps.append(("pool", _pooling(config)))
        elif kind == "Dense":
            activation = str(config.get("activation_function", "torch.nn.modules.linear.Identity")).rsplit(".", 1)[-1]
            if activation not in ACTIVATIONS:
                raise UnsupportedPipeline(f"Dense activation {activation!r} in {folder}")
            steps.append(("dense", {"folder": folder, "in_features": int(config["in_features"]),
                                    "out_features": int(config["out_features"]), "bias": bool(config.get("bias", True)),
                                    "activation": activation}))
        elif kind == "Normalize":
            steps.append(("normalize", {}))
        else:
            raise UnsupportedPipeline(f"module {kind} ({folder}) has no SMECModel equivalent")
    if not steps or steps[0][0] != "pool":
        raise UnsupportedPipeline("the Transformer must be followed by a Pooling module")
    st_config = _read_json(path, "config_sentence_transformers.json", hub) or {}
    bert_config = _read_json(path, "sentence_bert_config.json", hub) or {}
    return {"steps": steps, "max_seq_length": bert_config.get("max_seq_length"),
            "prompts": dict(st_config.get("prompts") or {}), "default_prompt_name": st_config.get("default_prompt_name")}


def _pooling(config: dict) -> dict:
    """Pooling config in either schema (``pooling_mode`` or the legacy ``pooling_mode_*_tokens`` booleans)."""
    mode = config.get("pooling_mode")
    if mode is None:
        modes = [name for key, name in LEGACY_POOLING_KEYS.items() if config.get(key)]
        mode = modes[0] if len(modes) == 1 else modes
    if isinstance(mode, list):
        if len(mode) != 1:
            raise UnsupportedPipeline(f"pooling over several modes {mode} has no SMECModel equivalent")
        mode = mode[0]
    if mode not in POOLING_MODES:
        raise UnsupportedPipeline(f"pooling mode {mode!r}")
    return {"mode": mode, "include_prompt": bool(config.get("include_prompt", True))}


def pool(token_embeddings: torch.Tensor, attention_mask: torch.Tensor, mode: str,
         prompt_length: int | None = None) -> torch.Tensor:
    """Sentence-Transformers' ``Pooling`` for one mode, on right- or left-padded batches; ``prompt_length``
    excludes the prompt's tokens (``include_prompt=False``)."""
    original = attention_mask
    if prompt_length:
        attention_mask = attention_mask.clone()
        pad = attention_mask.to(torch.int32).argmax(dim=1)
        positions = torch.arange(attention_mask.size(1), device=attention_mask.device).unsqueeze(0)
        attention_mask[positions < (pad + prompt_length).unsqueeze(1)] = 0
    mask = attention_mask.unsqueeze(-1).to(token_embeddings.dtype)
    if mode in ("mean", "mean_sqrt_len_tokens"):
        total, count = (token_embeddings * mask).sum(dim=1), mask.sum(dim=1).clamp(min=1e-9)
        return total / (count if mode == "mean" else count.sqrt())
    if mode == "max":
        return token_embeddings.masked_fill(mask == 0, float("-inf")).max(dim=1).values
    if mode == "cls":
        first = attention_mask.to(torch.int).argmax(dim=1)
        return token_embeddings[torch.arange(len(first), device=first.device), first]
    if mode == "weightedmean":
        weights = torch.arange(1, token_embeddings.shape[1] + 1, device=token_embeddings.device,
                               dtype=token_embeddings.dtype).view(1, -1, 1)
        weights = weights - original.to(torch.int32).argmax(dim=1).view(-1, 1, 1)
        weighted = mask * weights
        return (token_embeddings * weighted).sum(dim=1) / weighted.sum(dim=1).clamp(min=1e-9)
    if mode == "lasttoken":
        seq_len = attention_mask.shape[1]
        any_token, from_end = attention_mask.flip(1).max(dim=1)
        last = seq_len - 1 - torch.where(any_token == 0, seq_len - 1, from_end)
        return (token_embeddings * mask)[torch.arange(len(last), device=last.device), last]
    raise ValueError(f"unsupported pooling mode {mode!r}")


class _Dense(nn.Module):
    """Sentence-Transformers' ``Dense``: ``activation(linear(x))``, weights under ``linear.*``."""

    def __init__(self, in_features: int, out_features: int, bias: bool, activation: str) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features, bias=bias)
        self.activation = getattr(nn, activation)()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.linear(x))


class SMECModel(PreTrainedModel):
    """Encoder -> pooling -> ``Dense`` layers (the last one the SMEC head) -> normalisation, as exported.

    ``forward(..., truncate_dim=k).pooler_output`` is the k-dim SMEC embedding (``k`` must be a trained size);
    :meth:`encode` tokenises with the folder's tokenizer, its prompts and its ``max_seq_length``, exactly as
    ``SentenceTransformer.encode_query`` / ``encode_document`` / ``encode(prompt_name=...)`` do.
    """

    config_class = PretrainedConfig     # the encoder's own config class; see from_pretrained
    base_model_prefix = "encoder"
    main_input_name = "input_ids"
    _supports_sdpa = True
    _supports_flash_attn = True
    _keys_to_ignore_on_load_missing = [r"^dense\."]   # read from the Dense folders after the encoder loads

    def __init__(self, config: PretrainedConfig, pipeline: dict | None = None) -> None:
        super().__init__(config)
        self.pipeline = pipeline or {"steps": [("pool", {"mode": "mean", "include_prompt": True})]}
        self.encoder = AutoModel.from_config(config)
        self.dense = nn.ModuleList(_Dense(s["in_features"], s["out_features"], s["bias"], s["activation"])
                                   for kind, s in self.pipeline["steps"] if kind == "dense")
        self.prompts: dict[str, str] = dict(self.pipeline.get("prompts") or {})
        self.default_prompt_name: str | None = self.pipeline.get("default_prompt_name")
        self.max_seq_length: int | None = self.pipeline.get("max_seq_length")
        self.matryoshka_dimensions: list[int] = list(getattr(config, "matryoshka_dimensions", None) or [])
        self._tokenizer = None
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        """The encoder and the Dense layers are always loaded from the folder; nothing to initialise here."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str, *model_args: Any,
                        config: PretrainedConfig | None = None, **kwargs: Any) -> "SMECModel":
        """Load a folder or Hub repo written by ``smec export`` (no ``trust_remote_code`` needed for this class)."""
        path = str(pretrained_model_name_or_path)
        hub = {key: kwargs[key] for key in HUB_KWARGS if key in kwargs}
        pipeline = kwargs.pop("pipeline", None) or read_pipeline(path, **hub)
        if config is None:
            config = AutoConfig.from_pretrained(path, **hub)
        model = super().from_pretrained(path, *model_args, config=config, pipeline=pipeline, **kwargs)
        dense = [s for kind, s in pipeline["steps"] if kind == "dense"]
        for layer, step in zip(model.dense, dense):
            weights = load_file(cached_file(path, f"{step['folder']}/{WEIGHTS_NAME}", **hub))
            layer.load_state_dict({k: v for k, v in weights.items() if k.startswith("linear.")})
        model.name_or_path = path
        return model.eval()

    def check_dimension(self, truncate_dim: int | None) -> None:
        """Reject output sizes SMEC was not trained for: a prefix of another size is not a SMEC embedding."""
        if truncate_dim is not None and truncate_dim not in self.matryoshka_dimensions:
            raise ValueError(f"truncate_dim={truncate_dim} was not trained; this SMEC model supports "
                             f"{sorted(self.matryoshka_dimensions, reverse=True)}")

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, truncate_dim: int | None = None,
                prompt_length: int | None = None, return_dict: bool | None = None,
                **kwargs: Any) -> BaseModelOutputWithPooling | tuple:
        """``prompt_length``: tokens of the prompt at the start of every text, left out of the pooling when the
        folder's Pooling has ``include_prompt=False`` (what :meth:`encode` passes)."""
        self.check_dimension(truncate_dim)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask, return_dict=True, **kwargs)
        x, dense = out.last_hidden_state, iter(self.dense)
        for kind, step in self.pipeline["steps"]:
            if kind == "pool":
                x = pool(x, attention_mask, step["mode"], None if step["include_prompt"] else prompt_length)
            elif kind == "dense":
                x = next(dense)(x)
            else:
                x = F.normalize(x, p=2, dim=-1)
        if truncate_dim is not None:
            x = x[:, :truncate_dim]
        result = BaseModelOutputWithPooling(last_hidden_state=out.last_hidden_state, pooler_output=x,
                                            hidden_states=getattr(out, "hidden_states", None),
                                            attentions=getattr(out, "attentions", None))
        return result if return_dict is not False else result.to_tuple()

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = AutoTokenizer.from_pretrained(self.name_or_path)
        return self._tokenizer

    @torch.no_grad()
    def encode(self, texts: Sequence[str], prompt_name: str | None = None, prompt: str | None = None,
               truncate_dim: int | None = None, batch_size: int = 32) -> torch.Tensor:
        """Embeddings of ``texts`` as Sentence-Transformers computes them: ``prompt_name`` picks one of
        :attr:`prompts` (e.g. ``"query"``; default: the folder's ``default_prompt_name``), ``prompt`` gives one."""
        if prompt is None:
            name = prompt_name or self.default_prompt_name
            if name is not None and name not in self.prompts:
                raise ValueError(f"prompt_name={name!r}; this model has prompts {sorted(self.prompts)}")
            prompt = self.prompts.get(name, "") if name else ""
        limit = {"max_length": self.max_seq_length} if self.max_seq_length else {}
        prompt_length = None
        if prompt:
            ids = self.tokenizer([prompt], **limit, truncation=True)["input_ids"][0]
            prompt_length = len(ids) - (1 if ids and ids[-1] in self.tokenizer.all_special_ids else 0)
        device = next(self.parameters()).device
        batches = []
        for start in range(0, len(texts), batch_size):
            batch = self.tokenizer([prompt + t for t in texts[start:start + batch_size]], padding=True,
                                   truncation=True, return_tensors="pt", **limit).to(device)
            batches.append(self(**batch, truncate_dim=truncate_dim, prompt_length=prompt_length).pooler_output)
        return torch.cat(batches)
