"""smec_hf: Sequential Matryoshka Embedding Compression (SMEC) for the Hugging Face stack.

Importing the package registers ``SMECConfig``/``SMECModel`` with ``AutoConfig``/``AutoModel``, so exported
repos load with ``AutoModel.from_pretrained(repo)`` and no ``trust_remote_code``.
"""
from .core.config import FitConfig
from .hf import SMECConfig, SMECModel, register_auto_classes
from .smec.chain import SMECChain, default_dimension_path
from .smec.settings import SMECSettings

__version__ = "0.1.0"

register_auto_classes()

__all__ = ["FitConfig", "SMECChain", "SMECConfig", "SMECModel", "SMECSettings", "default_dimension_path",
           "__version__"]
