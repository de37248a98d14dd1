"""smec_hf: Sequential Matryoshka Embedding Compression (SMEC) for the Hugging Face stack.

An exported model loads anywhere without this package (``SentenceTransformer(repo)``, vLLM, TEI); with it,
``smec_hf.SMECModel.from_pretrained(repo)`` gives the whole pipeline as one transformers model, no
``trust_remote_code`` needed. In a notebook, ``smec_hf.train(base_model, data, output_dir, **settings)`` and
``smec_hf.export(run_dir, model_dir)`` do what ``smec train`` and ``smec export`` do.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# imported on first use, so that `smec --help` and `import smec_hf` do not load torch and transformers
_EXPORTS = {"train": "api", "export": "api", "load_retrieval_data": "data.sources", "FitConfig": "core.config", "SMECChain": "smec.chain", "SMECModel": "hf.modeling_smec",
            "SMECSettings": "smec.settings", "default_dimension_path": "smec.chain"}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'smec_hf' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)


def __dir__() -> list[str]:
    """The lazy API too, so that ``dir(smec_hf)`` and tab completion list ``train``, ``export``, ... before use."""
    return sorted({*globals(), *__all__})
