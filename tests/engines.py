"""What the serving engines compute from an exported folder, for tests that compare it with Sentence-Transformers."""
from __future__ import annotations

import numpy as np
import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.base.modules import Dense
from sentence_transformers.sentence_transformer.modules import Pooling


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def engine_order(model: SentenceTransformer, texts: list[str], k: int, prompt: str = "") -> np.ndarray:
    """pool -> every Dense -> cut to k -> normalise: vLLM's and TEI's order, whatever modules.json says."""
    features = model.tokenize([prompt + t for t in texts])
    with torch.no_grad():
        x = model[0](features)
        for module in list(model)[1:]:
            if isinstance(module, (Pooling, Dense)):
                x = module(x)
        return torch.nn.functional.normalize(x["sentence_embedding"][:, :k], dim=-1).numpy()
