"""smec_hf: Sequential Matryoshka Embedding Compression (SMEC) for the Hugging Face stack.

An exported model loads anywhere without this package (``SentenceTransformer(repo)``, vLLM, TEI); with it,
``smec_hf.SMECModel.from_pretrained(repo)`` gives the whole pipeline as one transformers model, no
``trust_remote_code`` needed.
"""
from .core.config import FitConfig
from .hf import SMECModel
from .smec.chain import SMECChain, default_dimension_path
from .smec.settings import SMECSettings

__version__ = "0.1.0"

__all__ = ["FitConfig", "SMECChain", "SMECModel", "SMECSettings", "default_dimension_path", "__version__"]
