"""Hugging Face packaging of SMEC: the exported folder every engine serves (``export``), ``SMECModel`` for
transformers, the Sentence-Transformers module, loading any base encoder (PEFT adapters included), push and card.

Only ``SMECModel`` is imported here; the rest loads Sentence-Transformers and is imported where it is used.
"""
from .modeling_smec import SMECModel

__all__ = ["SMECModel"]
