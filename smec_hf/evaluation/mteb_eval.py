"""Score every method at every dimension with MTEB, writing a standard MTEB results folder.

Each method is an MTEB model (``ModelMeta``) named ``smec-hf/<method>`` whose ``embed_dim`` lists the
dimensions; ``meta.load_model(embed_dim=k)`` makes each dimension its own MTEB experiment, stored under
``results/smec-hf__<method>/<revision>/experiments/embed_dim_<k>/``. Two cache traps are closed:
the revision is a hash of what is scored (so a different model never reuses old results) and every
run uses ``overwrite_strategy="always"``.

* Baselines (and SMEC when no exported model exists) are scored through :class:`CachedVectorsEncoder`,
  which serves ``compressor.transform(cached base vectors, k)`` looked up by document / query id.
* The exported SMEC model is scored through the path users get: ``SentenceTransformer(model_dir)``
  inside MTEB's own Sentence-Transformers wrapper. It encodes each text once at full size; the other
  dimensions take prefixes of those vectors, which is exactly what ``encode(truncate_dim=k)`` returns.
"""
from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np
from mteb.models.abs_encoder import AbsEncoder
from mteb.models.model_meta import ModelMeta, ScoringFunction
from mteb.types import PromptType
from tqdm.auto import tqdm

if TYPE_CHECKING:
    from mteb.abstasks.abstask import AbsTask

    from ..core.types import Compressor, Embeddings

ORG = "smec-hf"
Scores = dict[str, dict[int, float]]          # task name -> dim -> nDCG@10


def _ids_of(inputs: Any) -> list[str]:
    return [str(i) for batch in inputs for i in batch["id"]]


def _check_prompt_type(prompt_type: PromptType | None) -> PromptType:
    if prompt_type not in (PromptType.query, PromptType.document):
        raise ValueError(f"prompt_type={prompt_type!r}: only retrieval tasks (queries and documents) are supported")
    return prompt_type


class CachedVectorsEncoder(AbsEncoder):
    """An MTEB encoder returning ``transform(base vector, embed_dim)`` of cached embeddings, found by id.

    Scoring a baseline needs no encoder pass at all; the ids MTEB asks for must be in the cache.
    """

    def __init__(self, cache: "Embeddings", transform: Callable[[np.ndarray, int], np.ndarray],
                 embed_dim: int) -> None:
        self.cache, self.transform, self.embed_dim = cache, transform, embed_dim
        self.index = {PromptType.document: cache.doc_index(), PromptType.query: cache.query_index()}

    def encode(self, inputs: Any, *, task_metadata: Any, hf_split: str, hf_subset: str,
               prompt_type: PromptType | None = None, **kwargs: Any) -> np.ndarray:
        kind = _check_prompt_type(prompt_type)
        index, ids = self.index[kind], _ids_of(inputs)
        missing = [i for i in ids if i not in index]
        if missing:
            raise KeyError(f"{len(missing)} {kind.value} ids of task {task_metadata.name} are not in the embedding "
                           f"cache (e.g. {missing[:3]}); the cache must be built from the same dataset")
        matrix = self.cache.corpus if kind is PromptType.document else self.cache.queries
        vectors = np.asarray(matrix[[index[i] for i in ids]], dtype=np.float32)
        return np.asarray(self.transform(vectors, self.embed_dim), dtype=np.float32)


class FullSizeEncodings:
    """Full-size embeddings from MTEB's Sentence-Transformers wrapper, kept per (kind, id) so every
    dimension's experiment slices one encoding pass instead of running the encoder again."""

    def __init__(self, model_dir: str | Path, device: str | None = None) -> None:
        from mteb.models.sentence_transformer_wrapper import SentenceTransformerEncoderWrapper
        from sentence_transformers import SentenceTransformer

        self.wrapper = SentenceTransformerEncoderWrapper(SentenceTransformer(str(model_dir), device=device))
        self.vectors: dict[tuple[PromptType, str], np.ndarray] = {}
        self.encoded_texts = 0

    def get(self, inputs: Any, prompt_type: PromptType | None, **encode_args: Any) -> np.ndarray:
        kind = _check_prompt_type(prompt_type)
        ids = _ids_of(inputs)
        if any((kind, i) not in self.vectors for i in ids):
            encoded = np.asarray(self.wrapper.encode(inputs, prompt_type=kind, **encode_args), dtype=np.float32)
            self.vectors.update(((kind, i), v) for i, v in zip(ids, encoded))
            self.encoded_texts += len(ids)
        return np.stack([self.vectors[(kind, i)] for i in ids])


class SlicedEncoder(AbsEncoder):
    """The first ``embed_dim`` coordinates of :class:`FullSizeEncodings` (= ``encode(truncate_dim=embed_dim)``)."""

    def __init__(self, encodings: FullSizeEncodings, embed_dim: int) -> None:
        self.encodings, self.embed_dim = encodings, embed_dim

    def encode(self, inputs: Any, *, task_metadata: Any, hf_split: str, hf_subset: str,
               prompt_type: PromptType | None = None, **kwargs: Any) -> np.ndarray:
        full = self.encodings.get(inputs, prompt_type, task_metadata=task_metadata, hf_split=hf_split,
                                  hf_subset=hf_subset, **kwargs)
        return full[:, : self.embed_dim]


def _meta(name: str, revision: str, dims: Sequence[int], loader: Callable[..., AbsEncoder],
          reference: str | None = None) -> ModelMeta:
    return ModelMeta.create_empty(overwrites=dict(
        loader=loader, name=f"{ORG}/{name}", revision=revision, embed_dim=[int(d) for d in dims],
        similarity_fn_name=ScoringFunction.COSINE, framework=["PyTorch"], modalities=["text"], use_instructions=False,
        open_weights=True, reference=reference,
    ))


def compressor_revision(compressor: "Compressor", cache: "Embeddings") -> str:
    """A hash of what the compressor computes (its outputs on the first cached documents at every dim)."""
    digest = hashlib.sha256(f"{compressor.name}\0{cache.meta.get('key', '')}".encode())
    probe = np.asarray(cache.corpus[: min(64, len(cache.corpus))], dtype=np.float32)
    for dim in compressor.dims:
        digest.update(np.ascontiguousarray(compressor.transform(probe, dim), dtype=np.float32).tobytes())
    return digest.hexdigest()[:12]


def model_revision(model_dir: str | Path) -> str:
    """A hash of an exported model's weights (every ``*.safetensors`` file), which is what MTEB scores."""
    digest = hashlib.sha256()
    for file in sorted(Path(model_dir).rglob("*.safetensors")):
        digest.update(file.relative_to(model_dir).as_posix().encode())
        digest.update(hashlib.sha256(file.read_bytes()).digest())
    return digest.hexdigest()[:12]


def compressor_meta(compressor: "Compressor", cache: "Embeddings") -> ModelMeta:
    """The MTEB model of a fitted compressor on cached base vectors; one ``embed_dim`` per fitted dim."""
    def loader(model_name: str, revision: str | None = None, embed_dim: int | None = None, **_: Any) -> AbsEncoder:
        if embed_dim is None:
            raise ValueError(f"{model_name}: load it with embed_dim=<one of {compressor.dims}>")
        return CachedVectorsEncoder(cache, compressor.transform, embed_dim)

    return _meta(compressor.name, compressor_revision(compressor, cache), compressor.dims, loader)


def exported_model_meta(model_dir: str | Path, dims: Sequence[int], name: str,
                        device: str | None = None) -> ModelMeta:
    """The MTEB model of an exported Sentence-Transformers folder, one ``embed_dim`` per trained size.

    The model is loaded (and texts encoded) lazily, once, whichever dimension is evaluated first.
    """
    shared: dict[str, FullSizeEncodings] = {}

    def loader(model_name: str, revision: str | None = None, embed_dim: int | None = None, **_: Any) -> AbsEncoder:
        if embed_dim is None:
            raise ValueError(f"{model_name}: load it with embed_dim=<one of {list(dims)}>")
        if "encodings" not in shared:
            shared["encodings"] = FullSizeEncodings(model_dir, device)
        return SlicedEncoder(shared["encodings"], embed_dim)

    return _meta(name, model_revision(model_dir), dims, loader)   # no local path in the results folder


def evaluate_meta(meta: ModelMeta, tasks: Sequence["AbsTask"], results_dir: str | Path, *,
                  batch_size: int = 32, show_progress_bar: bool = True) -> Scores:
    """Run ``tasks`` once per ``embed_dim`` experiment of ``meta``; results are written under ``results_dir``.

    Returns ``{task name: {dim: main score}}`` (nDCG@10 for retrieval tasks).
    """
    import mteb

    cache = mteb.ResultCache(str(results_dir))
    scores: Scores = {t.metadata.name: {} for t in tasks}
    for dim in meta.embed_dim:
        model = meta.load_model(embed_dim=dim)
        result = mteb.evaluate(model, list(tasks), cache=cache, overwrite_strategy="always",
                               encode_kwargs={"batch_size": batch_size, "show_progress_bar": show_progress_bar},
                               show_progress_bar=False)
        for task_result in result.task_results:
            scores[task_result.task_name][int(dim)] = float(task_result.get_score())
    return scores


def evaluate_methods(methods: Sequence["Compressor"], cache: "Embeddings", tasks: Sequence["AbsTask"],
                     results_dir: str | Path, *, model_dirs: Mapping[str, str | Path] | None = None,
                     batch_size: int = 32, show_progress_bar: bool = True,
                     timings: dict[str, float] | None = None) -> dict[str, Scores]:
    """MTEB scores ``{method: {task: {dim: nDCG@10}}}`` of fitted compressors on ``tasks``.

    A method named in ``model_dirs`` (method -> exported model folder) is scored through that folder's
    ``SentenceTransformer`` instead of its compressor, as a user of the published model would get it.
    ``timings`` (optional) receives the seconds each method took, as ``mteb_<method>``.
    """
    model_dirs = dict(model_dirs or {})
    out: dict[str, Scores] = {}
    bar = tqdm(methods, desc="MTEB", unit="method", disable=not show_progress_bar)
    for method in bar:
        bar.set_description(f"MTEB {method.name}")
        start = time.perf_counter()
        if method.name in model_dirs:
            meta = exported_model_meta(model_dirs[method.name], method.dims, name=method.name)
        else:
            meta = compressor_meta(method, cache)
        out[method.name] = evaluate_meta(meta, tasks, results_dir, batch_size=batch_size,
                                         show_progress_bar=show_progress_bar)
        if timings is not None:
            timings[f"mteb_{method.name}"] = time.perf_counter() - start
    bar.close()
    return out


def single_task(scores: Mapping[str, Scores]) -> dict[str, dict[int, float]]:
    """``{method: {dim: score}}`` when every method was scored on exactly one task (the report's shape)."""
    tasks = {name for by_task in scores.values() for name in by_task}
    if len(tasks) != 1:
        raise ValueError(f"expected scores on one task, got {sorted(tasks)}")
    return {method: dict(next(iter(by_task.values()))) for method, by_task in scores.items()}
