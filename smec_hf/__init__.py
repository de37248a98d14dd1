"""smec_hf: Sequential Matryoshka Embedding Compression (SMEC) for the Hugging Face stack.

Importing the package registers ``SMECConfig``/``SMECModel`` with ``AutoConfig``/``AutoModel``, so exported
repos load with ``AutoModel.from_pretrained(repo)`` and no ``trust_remote_code``.
"""
from .config import SMECTrainingConfig
from .hf import SMECConfig, SMECModel, register_auto_classes
from .method.chain import SMECChain, default_dimension_path

__version__ = "0.1.0"

register_auto_classes()

__all__ = ["SMECChain", "SMECConfig", "SMECModel", "SMECTrainingConfig", "default_dimension_path", "__version__"]
