"""Data: retrieval datasets (BEIR folders, Hub datasets, Sentence-Transformers pair/triplet tables, bare corpora), the on-disk cache of frozen-encoder embeddings, and the
training examples (pairs, graded labels, mined hard negatives) every supervised method draws from."""
from .beir import (
    DEFAULT_DATASET,
    DatasetFormatError,
    RetrievalData,
    held_out_split,
    load_beir,
    load_hf_dataset,
)
from .sources import load_retrieval_data
from .tables import text_id
from .cache import CacheFormatError, EmbeddingCache, default_base_model, encoder_identity, load_or_encode

__all__ = [
    "DEFAULT_DATASET",
    "CacheFormatError",
    "DatasetFormatError",
    "EmbeddingCache",
    "RetrievalData",
    "default_base_model",
    "encoder_identity",
    "held_out_split",
    "load_beir",
    "load_hf_dataset",
    "load_or_encode",
    "load_retrieval_data",
    "text_id",
]
