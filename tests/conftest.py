"""Shared fixtures: real SciFact (read in place from ../shared/data), a small real subset, its MiniLM cache."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from data_paths import SHARED_SCIFACT  # noqa: E402
from smec_hf.data import EmbeddingCache, RetrievalData, default_base_model, load_beir, load_or_encode  # noqa: E402

SMALL_QUERIES = {"train": 120, "test": 60}
SMALL_EXTRA_DOCS = 600
TEST_MAX_SEQ_LENGTH = 128


@pytest.fixture(scope="session")
def embedding_cache_dir(request: pytest.FixtureRequest) -> Path:
    """Persistent across runs (the cache key covers model, data and settings, so reuse is safe)."""
    return Path(request.config.rootpath) / ".pytest_cache" / "smec_embeddings"


@pytest.fixture(scope="session")
def minilm_path() -> str:
    """Folder of the offline all-MiniLM-L6-v2 (384-d, normalised)."""
    return default_base_model()


@pytest.fixture(scope="session")
def scifact() -> RetrievalData:
    """The full SciFact: 5,183 docs, 809 train + 300 test queries."""
    if not SHARED_SCIFACT.is_dir():
        pytest.exit(f"SciFact not found at {SHARED_SCIFACT}: put the shared data beside the repository "
                    "(../shared/data) or set SMEC_SHARED_DATA", returncode=2)
    return load_beir(SHARED_SCIFACT)


@pytest.fixture(scope="session")
def scifact_small(scifact: RetrievalData) -> RetrievalData:
    """120 train + 60 test queries, every document they judge, and 600 distractors (seed 0)."""
    return scifact.subset(SMALL_QUERIES, n_extra_docs=SMALL_EXTRA_DOCS, seed=0)


@pytest.fixture(scope="session")
def scifact_small_cache(scifact_small: RetrievalData, minilm_path: str, embedding_cache_dir: Path) -> EmbeddingCache:
    """MiniLM embeddings of scifact_small (max_seq_length 128); encoded once (about a minute), then loaded from disk.

    chunk_size does not change the cache key; a small one means an interrupted first run loses little.
    """
    return load_or_encode(
        scifact_small, minilm_path, embedding_cache_dir, max_seq_length=TEST_MAX_SEQ_LENGTH,
        chunk_size=256, show_progress_bar=False,
    )
