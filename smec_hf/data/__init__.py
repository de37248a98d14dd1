"""Retrieval data (BEIR layout, bundled SciFact) and the on-disk cache of frozen-encoder embeddings."""
from .beir import (
    DatasetFormatError,
    RetrievalData,
    bundled_dataset_path,
    held_out_split,
    load_beir,
    load_hf_dataset,
    load_retrieval_data,
)
from .cache import CacheFormatError, EmbeddingCache, default_base_model, encoder_identity, load_or_encode

__all__ = [
    "CacheFormatError",
    "DatasetFormatError",
    "EmbeddingCache",
    "RetrievalData",
    "bundled_dataset_path",
    "default_base_model",
    "encoder_identity",
    "held_out_split",
    "load_beir",
    "load_hf_dataset",
    "load_or_encode",
    "load_retrieval_data",
]
