"""Hugging Face packaging of SMEC: transformers classes, the Sentence-Transformers module, export, push, card.

Only the transformers classes are imported here (``import smec_hf`` registers them); ``export``, ``hub``,
``model_card`` and ``st_module`` load Sentence-Transformers and are imported where they are used.
"""
from transformers import AutoConfig, AutoModel

from .configuration_smec import SMECConfig
from .modeling_smec import SMECModel, SMECOutput


def register_auto_classes() -> None:
    """Let ``AutoConfig``/``AutoModel`` load SMEC repos with the installed classes, without ``trust_remote_code``."""
    AutoConfig.register(SMECConfig.model_type, SMECConfig, exist_ok=True)
    AutoModel.register(SMECConfig, SMECModel, exist_ok=True)


__all__ = ["SMECConfig", "SMECModel", "SMECOutput", "register_auto_classes"]
