"""Score every method at every dimension with MTEB, writing a standard MTEB results folder.

Each method is an MTEB model (``ModelMeta``) named ``smec-hf/<method>`` whose ``embed_dim`` lists the
dimensions; ``meta.load_model(embed_dim=k)`` makes each dimension its own MTEB experiment, stored under
``results/smec-hf__<method>/<revision>/experiments/embed_dim_<k>/``. Two cache traps are closed:
the revision is a hash of what is scored (so a different model never reuses old results) and every
run uses ``overwrite_strategy="always"``.

* Baselines (and SMEC when no exported model exists) are scored through :class:`CachedVectorsEncoder`,
  which serves ``compressor.transform(cached base vectors, k)`` looked up by document / query id.
* The exported SMEC model is checked first (:func:`check_export`): a seeded sample of each task's documents
  and queries goes through the path users get, ``SentenceTransformer(model_dir)`` inside MTEB's own
  Sentence-Transformers wrapper, and must give, at every trained size, the vectors the fitted head gives
  on the cached base vectors. Then the cached vectors are what MTEB scores (no second encode of the corpus),
  under the exported model's revision. If they differ (or ``reencode_exported=True``), every text is
  encoded through the exported model once at full size; the other dimensions take prefixes of those
  vectors, which is exactly what ``encode(truncate_dim=k)`` returns.

Search is exact in every case: MTEB's FAISS backend (:class:`FaissSearch`: ``IndexFlatIP`` on unit vectors, one
top-k search of all queries) instead of its default, a Python heap merge of every query's top 1,000 per corpus
chunk.
"""
from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence

import numpy as np
from mteb._create_dataloaders import create_dataloader
from mteb.models.abs_encoder import AbsEncoder
from mteb.models.model_meta import ModelMeta, ScoringFunction
from mteb.models.search_encoder_index import FaissSearchIndex
from mteb.models.search_wrappers import SearchEncoderWrapper
from mteb.types import PromptType
from tqdm.auto import tqdm

if TYPE_CHECKING:
    from mteb.abstasks.abstask import AbsTask

    from ..core.types import Compressor, Embeddings

ORG = "smec-hf"
Scores = dict[str, dict[int, float]]          # task name -> dim -> nDCG@10
EXPORT_CHECK_SAMPLE = 256                     # documents, and queries, sampled per task split
# Largest |difference| of a unit-length coordinate between the exported model and the head on cached vectors:
# float32 encodes of the same text in other batches (padding, summation order) differ by ~1e-6 on CPU.
EXPORT_CHECK_TOLERANCE = 1e-4
logger = logging.getLogger(__name__)


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
    dimension's experiment (and the check's sample) slices one encoding pass instead of running the encoder again."""

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


class FaissSearch(SearchEncoderWrapper):
    """MTEB's search through its FAISS backend (exact ``IndexFlatIP`` on unit vectors, all queries at once).

    FAISS already returns each query's top k in order, so they are taken as they come; MTEB 2.26's own pass
    pushes them through a heap and reads each id from the Arrow column one at a time (40 s of a SciFact run).
    """

    def __init__(self, model: AbsEncoder) -> None:
        super().__init__(model, index_backend=FaissSearchIndex(model))

    def _sort_full_corpus_results(self, *, query_idx_to_id: dict[int, str], cos_scores_top_k_idx: list[list[int]],
                                  cos_scores_top_k_values: list[list[float]], sub_corpus_ids: Sequence[str],
                                  **_: Any) -> dict[str, list[tuple[float, str]]]:
        ids = list(sub_corpus_ids)
        return {query_idx_to_id[q]: [(score, ids[j]) for j, score in zip(rows, scores)]
                for q, (rows, scores) in enumerate(zip(cos_scores_top_k_idx, cos_scores_top_k_values))}


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


def compressor_meta(compressor: "Compressor", cache: "Embeddings", revision: str | None = None) -> ModelMeta:
    """The MTEB model of a fitted compressor on cached base vectors; one ``embed_dim`` per fitted dim.

    ``revision``: default, a hash of the compressor's outputs; an exported model checked equal to it passes its
    own (:func:`model_revision`), so the results folder names what was published.
    """
    def loader(model_name: str, revision: str | None = None, embed_dim: int | None = None, **_: Any) -> AbsEncoder:
        if embed_dim is None:
            raise ValueError(f"{model_name}: load it with embed_dim=<one of {compressor.dims}>")
        return CachedVectorsEncoder(cache, compressor.transform, embed_dim)

    return _meta(compressor.name, revision or compressor_revision(compressor, cache), compressor.dims, loader)


def exported_model_meta(model_dir: str | Path, dims: Sequence[int], name: str, device: str | None = None,
                        encodings: FullSizeEncodings | None = None) -> ModelMeta:
    """The MTEB model of an exported Sentence-Transformers folder, one ``embed_dim`` per trained size.

    The model is loaded (and texts encoded) lazily, once, whichever dimension is evaluated first; ``encodings``
    (of this folder) reuses what a check already encoded.
    """
    shared: dict[str, FullSizeEncodings] = {} if encodings is None else {"encodings": encodings}

    def loader(model_name: str, revision: str | None = None, embed_dim: int | None = None, **_: Any) -> AbsEncoder:
        if embed_dim is None:
            raise ValueError(f"{model_name}: load it with embed_dim=<one of {list(dims)}>")
        if "encodings" not in shared:
            shared["encodings"] = FullSizeEncodings(model_dir, device)
        return SlicedEncoder(shared["encodings"], embed_dim)

    return _meta(name, model_revision(model_dir), dims, loader)   # no local path in the results folder


# -- the exported model against the head on cached vectors ---------------------------------------------------


@dataclass(frozen=True)
class ExportCheck:
    """The exported model against its fitted head on cached base vectors, over ``texts`` sampled texts at every
    trained size, both unit-normalised: the largest coordinate difference and the lowest cosine (``inf`` and
    ``-inf`` with ``missing`` sampled ids that the cache lacks)."""

    texts: int
    max_abs_diff: float
    min_cosine: float
    missing: int = 0
    tolerance: float = EXPORT_CHECK_TOLERANCE

    @property
    def passed(self) -> bool:
        return self.missing == 0 and self.max_abs_diff <= self.tolerance

    def describe(self, method: str) -> str:
        """One line for the report: how ``method`` was scored, and why."""
        if self.passed:
            return (f"{method} was scored on the cached vectors through its head after the exported model gave the "
                    f"same embeddings on {self.texts} sampled texts at every size (largest difference "
                    f"{self.max_abs_diff:.1e} <= {self.tolerance:g} on unit vectors)")
        found = (f"{self.missing} sampled ids not in the embedding cache" if self.missing else
                 f"largest difference {self.max_abs_diff:.2e} > {self.tolerance:g} on unit vectors, lowest cosine "
                 f"{self.min_cosine:.6f}")
        return (f"{method} was scored through the exported model (every text re-encoded): on {self.texts} sampled "
                f"texts it did not match its head on the cached vectors ({found})")


def check_export(encodings: FullSizeEncodings, compressor: "Compressor", cache: "Embeddings",
                 tasks: Sequence["AbsTask"], *, sample_size: int = EXPORT_CHECK_SAMPLE, seed: int = 0,
                 batch_size: int = 32, tolerance: float = EXPORT_CHECK_TOLERANCE) -> ExportCheck:
    """Encode a seeded sample of every task split's documents and queries through the exported model (as MTEB
    would: its wrapper, the task's prompts) and compare with ``compressor.transform`` of their cached vectors.

    Why: the head is exported as plain ``Dense`` layers, so the exported model should equal the head on the
    cached vectors; a sample proves it without a second encode of the corpus.
    """
    diffs, cosines, texts, missing = [0.0], [1.0], 0, 0
    for task, subset, split, kind, rows in _sampled_rows(tasks, sample_size, seed):
        loader = create_dataloader(rows, task_metadata=task.metadata, prompt_type=kind, batch_size=batch_size)
        exported = encodings.get(loader, kind, task_metadata=task.metadata, hf_split=split, hf_subset=subset,
                                 batch_size=batch_size, show_progress_bar=False)
        index = cache.doc_index() if kind is PromptType.document else cache.query_index()
        ids = [str(i) for i in rows["id"]]
        found = [i for i, row_id in enumerate(ids) if row_id in index]
        texts, missing = texts + len(ids), missing + len(ids) - len(found)
        matrix = cache.corpus if kind is PromptType.document else cache.queries
        base = np.asarray(matrix[[index[ids[i]] for i in found]], dtype=np.float32)
        for dim in compressor.dims:
            a, b = _unit_rows(exported[found, :dim]), _unit_rows(compressor.transform(base, dim))
            diffs.append(float(np.abs(a - b).max(initial=0.0)))
            cosines.append(float((a * b).sum(axis=1).min(initial=1.0)))
    if missing:
        return ExportCheck(texts, float("inf"), float("-inf"), missing, tolerance)
    return ExportCheck(texts, max(diffs), min(cosines), 0, tolerance)


def _sampled_rows(tasks: Sequence["AbsTask"], size: int, seed: int
                  ) -> Iterator[tuple["AbsTask", str, str, PromptType, Any]]:
    """``(task, subset, split, kind, rows)`` per evaluated split and kind: ``size`` rows drawn with ``seed``, in
    dataset order (the same rows on every run over the same data)."""
    for task in tasks:
        task.load_data()
        task.convert_v1_dataset_format_to_v2(num_proc=None)
        for subset in task.hf_subsets or list(task.dataset):
            for split in task.metadata.eval_splits:
                data = task.dataset[subset][split]
                for kind, rows in ((PromptType.document, data["corpus"]), (PromptType.query, data["queries"])):
                    rng = np.random.default_rng(seed)
                    picked = np.sort(rng.choice(len(rows), size=min(size, len(rows)), replace=False))
                    yield task, subset, split, kind, rows.select(picked.tolist())


def _unit_rows(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float64)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def evaluate_meta(meta: ModelMeta, tasks: Sequence["AbsTask"], results_dir: str | Path, *,
                  batch_size: int = 32, show_progress_bar: bool = True, faiss_search: bool = True) -> Scores:
    """Run ``tasks`` once per ``embed_dim`` experiment of ``meta``; results are written under ``results_dir``.

    ``faiss_search``: exact search through MTEB's FAISS backend (module doc); False: MTEB's default search.
    Returns ``{task name: {dim: main score}}`` (nDCG@10 for retrieval tasks).
    """
    import mteb

    cache = mteb.ResultCache(str(results_dir))
    scores: Scores = {t.metadata.name: {} for t in tasks}
    for dim in meta.embed_dim:
        model = meta.load_model(embed_dim=dim)
        if faiss_search:
            model = FaissSearch(model)
        result = mteb.evaluate(model, list(tasks), cache=cache, overwrite_strategy="always",
                               encode_kwargs={"batch_size": batch_size, "show_progress_bar": show_progress_bar},
                               show_progress_bar=False)
        for task_result in result.task_results:
            scores[task_result.task_name][int(dim)] = float(task_result.get_score())
    return scores


def evaluate_methods(methods: Sequence["Compressor"], cache: "Embeddings", tasks: Sequence["AbsTask"],
                     results_dir: str | Path, *, model_dirs: Mapping[str, str | Path] | None = None,
                     batch_size: int = 32, show_progress_bar: bool = True,
                     timings: dict[str, float] | None = None, reencode_exported: bool = False,
                     checks: dict[str, ExportCheck] | None = None) -> dict[str, Scores]:
    """MTEB scores ``{method: {task: {dim: nDCG@10}}}`` of fitted compressors on ``tasks``.

    A method named in ``model_dirs`` (method -> exported model folder) is scored as a user of the published
    model would get it: on the cached vectors once :func:`check_export` shows the folder's
    ``SentenceTransformer`` gives the same embeddings, else (or with ``reencode_exported``) through the folder.
    ``timings`` (optional) receives the seconds each method took, as ``mteb_<method>``; ``checks`` (optional)
    each checked method's :class:`ExportCheck`.
    """
    model_dirs = dict(model_dirs or {})
    out: dict[str, Scores] = {}
    bar = tqdm(methods, desc="MTEB", unit="method", disable=not show_progress_bar)
    for method in bar:
        bar.set_description(f"MTEB {method.name}")
        start = time.perf_counter()
        if method.name in model_dirs:
            meta, check = _exported_method_meta(method, model_dirs[method.name], cache, tasks, batch_size,
                                                reencode_exported)
            if check is not None and checks is not None:
                checks[method.name] = check
        else:
            meta = compressor_meta(method, cache)
        out[method.name] = evaluate_meta(meta, tasks, results_dir, batch_size=batch_size,
                                         show_progress_bar=show_progress_bar)
        if timings is not None:
            timings[f"mteb_{method.name}"] = time.perf_counter() - start
    bar.close()
    return out


def _exported_method_meta(method: "Compressor", model_dir: str | Path, cache: "Embeddings",
                          tasks: Sequence["AbsTask"], batch_size: int, reencode: bool
                          ) -> tuple[ModelMeta, ExportCheck | None]:
    """The MTEB model that scores an exported method: its head on the cached vectors if the check passes, else
    the exported folder itself (the check's encodings reused)."""
    encodings = FullSizeEncodings(model_dir)
    check = None if reencode else check_export(encodings, method, cache, tasks, batch_size=batch_size)
    if check is not None and check.passed:
        return compressor_meta(method, cache, revision=model_revision(model_dir)), check
    if check is not None:
        logger.warning("%s; re-encoding every text through %s", check.describe(method.name), model_dir)
    return exported_model_meta(model_dir, method.dims, name=method.name, encodings=encodings), check


def single_task(scores: Mapping[str, Scores]) -> dict[str, dict[int, float]]:
    """``{method: {dim: score}}`` when every method was scored on exactly one task (the report's shape)."""
    tasks = {name for by_task in scores.values() for name in by_task}
    if len(tasks) != 1:
        raise ValueError(f"expected scores on one task, got {sorted(tasks)}")
    return {method: dict(next(iter(by_task.values()))) for method, by_task in scores.items()}
