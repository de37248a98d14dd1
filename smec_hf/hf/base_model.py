"""Load the frozen base encoder named by ``--base-model``, with any PEFT adapter merged into its weights.

Sentence-Transformers 6.2 loads a folder that has ``adapter_config.json`` next to its ``modules.json`` natively:
its ``Transformer`` reads the base LLM's config from the adapter's ``base_model_name_or_path`` and transformers'
PEFT integration injects the LoRA layers into the plain model (``_hf_peft_config_loaded``, ``peft_config``). Such a
model's ``save_pretrained`` writes only the adapter, so an exported repository would need the base LLM and peft to
load. ``load_base_model`` therefore merges every adapter into the weights (``merge_adapters``), after which the model
is an ordinary transformers model that saves plain weights under the base model's key names.
"""
from __future__ import annotations

from pathlib import Path
from typing import TypeVar

from peft import PeftModel
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils.other import AuxiliaryTrainingWrapper
from sentence_transformers import SentenceTransformer
from torch import nn

__all__ = ["load_base_model", "merge_adapters"]

M = TypeVar("M", bound=nn.Module)


def load_base_model(name_or_path: str, *, trust_remote_code: bool = False, device: str = "cpu") -> SentenceTransformer:
    """Load a Hub id or Sentence-Transformers folder as ``SentenceTransformer``, PEFT adapters merged.

    A bare PEFT adapter folder (``adapter_config.json`` but no ``modules.json``) is refused: Sentence-Transformers
    would guess its pooling (mean, or last token only for ``*ForCausalLM`` architectures) and never normalise, and
    an embedding head trained on a guessed pipeline silently means something else.
    """
    arg = f"--base-model {name_or_path!r}"
    path = Path(name_or_path).expanduser()
    if path.is_dir() and (path / "adapter_config.json").is_file() and not (path / "modules.json").is_file():
        raise ValueError(
            f"{arg} is a bare PEFT adapter folder (adapter_config.json, no modules.json), so its pooling and "
            "normalisation are unknown. Save it as a Sentence-Transformers model first, e.g. "
            "SentenceTransformer(modules=[Transformer(adapter_dir), Pooling(dim, 'lasttoken'), Normalize()], "
            "prompts=...).save(folder), and pass that folder.")
    if not path.exists() and (path.is_absolute() or str(name_or_path).startswith((".", "~"))
                              or str(name_or_path).count("/") > 1):
        raise FileNotFoundError(f"{arg}: no such folder (give a Sentence-Transformers folder or a Hub id)")
    try:
        model = SentenceTransformer(str(path) if path.exists() else name_or_path, device=device,
                                    trust_remote_code=trust_remote_code)
    except Exception as error:
        if not trust_remote_code and "trust_remote_code" in str(error):
            raise ValueError(f"{arg} contains custom model code: pass --trust-remote-code if you trust it "
                             f"({error})") from error
        raise ValueError(f"cannot load {arg} as a Sentence-Transformers model: {error}") from error
    return merge_adapters(model)


def merge_adapters(model: M) -> M:
    """Merge every PEFT adapter inside ``model`` into its base weights, in place, and return ``model``.

    In place, because a copy would double the memory of an LLM. Handles both forms peft takes: adapters injected
    by transformers' PEFT integration (what Sentence-Transformers 6.2 loads) and a ``PeftModel`` wrapper. Afterwards
    no peft layer, ``peft_config`` or ``_hf_peft_config_loaded`` flag is left, so ``save_pretrained`` writes plain
    weights and no adapter files.
    """
    for name, module in list(model.named_modules()):
        if name and isinstance(module, PeftModel):
            _replace(model, name, module.merge_and_unload())
    for name, module in list(model.named_modules()):
        if getattr(module, "_hf_peft_config_loaded", False):
            _merge_injected(module)
    return model


def _merge_injected(hf_model: nn.Module) -> None:
    """Replace each tuner layer by its base layer with the adapter merged, as peft's ``merge_and_unload`` does for
    a ``PeftModel`` (transformers' integration has no merge of its own)."""
    tuner_names = [name for name, module in hf_model.named_modules()
                   if isinstance(module, (BaseTunerLayer, AuxiliaryTrainingWrapper))]
    outermost = [name for name in tuner_names
                 if not any(name.startswith(other + ".") for other in tuner_names)]
    for name in outermost:
        layer = hf_model.get_submodule(name)
        if hasattr(layer, "unload_and_optionally_merge_module"):
            merged = layer.unload_and_optionally_merge_module(merge=True, safe_merge=False, adapter_names=None)
        else:
            layer.merge()
            merged = layer.get_base_layer()
        _replace(hf_model, name, merged)
    if hasattr(hf_model, "peft_config"):
        del hf_model.peft_config
    hf_model._hf_peft_config_loaded = False
    # transformers 5 keeps the key renamings of the *last* load (here the adapter's, which add "base_model.model.")
    # and reverts them on save; drop them so save_pretrained uses the class's defaults, as for a freshly built model.
    hf_model.__dict__.pop("_weight_conversions", None)


def _replace(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, new)
