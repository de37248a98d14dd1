"""Local data that *is* an MTEB task, scored under MTEB's own task, so its results can go to the leaderboard.

A local copy of SciFact scored as ``LocalRetrieval-scifact`` gives results MTEB does not know. When the
content of the evaluated split (every corpus document, the split's queries and qrels) equals a known MTEB
task's, :func:`official_task_for` returns that task's own class, official metadata and dataset revision
included, with its data taken from the local files instead of the Hub (nothing is downloaded). Detection is by
content, never by name: a subset or an edited copy stays a local task.

MTEB scores each ``embed_dim`` as an experiment (``<revision>/experiments/embed_dim_<k>/``), while the
leaderboard reads the default folder; :func:`promote_full_dimension` writes the full-size result there, and
:func:`submission_notes` says how to submit.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from mteb.abstasks.retrieval import AbsTaskRetrieval

from ..data.beir import RetrievalData
from ..data.sources import load_retrieval_data
from .mteb_task import LocalRetrievalTask, retrieval_split, retrieval_tasks

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class KnownTask:
    """An MTEB task identified by the content of one split (see :func:`split_fingerprint`).

    ``dataset_revision`` is the task revision in ``mteb`` that this content was checked against: an ``mteb``
    whose task points at another revision may hold other data, so the match is then refused.
    """

    task_name: str
    dataset_revision: str
    split: str
    n_docs: int
    n_queries: int
    fingerprint: str


# SciFact: the BEIR release (shared/data/scifact, byte-identical to BEIR's files), which mteb/scifact publishes
KNOWN_TASKS: tuple[KnownTask, ...] = (
    KnownTask(task_name="SciFact", dataset_revision="d56462d0e63a25450459c4f213e49ffdb866f7f9", split="test",
              n_docs=5183, n_queries=300,
              fingerprint="731a02d4aaf0b6e4b39b1a84b8ffd6e71f846c496ce6210490b45f3240bf2f80"),
)


def split_fingerprint(data: RetrievalData, split: str) -> str:
    """sha256 of what MTEB scores on ``split``: sorted (id, text) of every document and of the split's judged
    queries, and the split's sorted (query, document, grade) judgments. Names, row order and other splits
    do not count, so a renamed or reordered copy matches and a subset or edited copy does not."""
    qrels = data.qrels[split]
    corpus = sorted(zip(data.corpus_ids, data.corpus_texts))
    queries = sorted((q, t) for q, t in zip(data.query_ids, data.query_texts) if q in qrels)
    judged = sorted((q, d, g) for q, docs in qrels.items() for d, g in docs.items())
    blob = json.dumps(["smec_hf.mteb_split/1", corpus, queries, judged], ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def known_task_for(data: RetrievalData, split: str = "test") -> KnownTask | None:
    """The known MTEB task whose ``split`` has exactly this content, else None."""
    if split not in data.qrels:
        return None
    n_queries = len(data.qrels[split])
    candidates = [k for k in KNOWN_TASKS if (k.split, k.n_docs, k.n_queries) == (split, len(data.corpus_ids), n_queries)]
    if not candidates:                       # the cheap check first: most data is not a known task
        return None
    fingerprint = split_fingerprint(data, split)
    return next((k for k in candidates if k.fingerprint == fingerprint), None)


class _LocalSplit:
    """Mixed in before an official MTEB task class: ``load_data`` reads the local data (as
    :class:`LocalRetrievalTask` does) instead of the Hub; the official ``metadata`` is inherited untouched."""

    local_data: RetrievalData
    local_split: str

    def load_data(self, num_proc: int | None = None, **kwargs: Any) -> None:
        if self.data_loaded:
            return
        self.dataset = {"default": {self.local_split: retrieval_split(self.local_data, self.local_split)}}
        self.data_loaded = True


def official_task_for(data: RetrievalData, split: str = "test") -> AbsTaskRetrieval | None:
    """MTEB's own task (e.g. ``SciFact``: its name, metadata and dataset revision) over the local ``data``, when
    its ``split`` is exactly that task's evaluation split; None otherwise (then score a local task)."""
    import mteb

    known = known_task_for(data, split)
    if known is None:
        return None
    official = type(mteb.get_task(known.task_name))
    revision, splits = official.metadata.dataset["revision"], list(official.metadata.eval_splits)
    if (revision, splits) != (known.dataset_revision, [known.split]):
        logger.warning("%s: this mteb evaluates dataset revision %s on %s, the local data was matched against %s "
                       "on %r; scoring it as a local task", known.task_name, revision, splits,
                       known.dataset_revision, known.split)
        return None
    task_class = type(official.__name__, (_LocalSplit, official),
                      {"local_data": data, "local_split": split, "__module__": __name__})
    return task_class()


def evaluation_tasks(data: RetrievalData | str | Path | None = None, split: str = "test",
                     task_names: Sequence[str] | None = None) -> list[AbsTaskRetrieval]:
    """:func:`~smec_hf.evaluation.mteb_task.retrieval_tasks`, except that local data equal to a known MTEB task
    is scored under that task (see :func:`official_task_for`)."""
    if task_names:
        return retrieval_tasks(task_names=task_names)
    if not isinstance(data, RetrievalData):
        data = load_retrieval_data(data)
    return [official_task_for(data, split) or LocalRetrievalTask.from_data(data, split)]


def promote_full_dimension(results_dir: str | Path) -> list[Path]:
    """Copy each model's full-size result (its largest ``embed_dim`` experiment) to the default folder
    ``results/<model>/<revision>/``, with its ``model_meta.json`` (no experiment kwargs) and run settings.

    The leaderboard and ``ResultCache.load_results``/``submit_results`` for a plain ``ModelMeta`` read that
    folder only. The largest dimension is the model's unreduced output (the demo's dims start at the encoder
    dimension), so the copy is what the model scores without ``truncate_dim``. Returns the task files written.
    """
    import mteb
    from mteb.models.model_meta import ModelMeta
    from mteb.results import TaskResult

    cache = mteb.ResultCache(results_dir)
    written: list[Path] = []
    for revision_dir in sorted(p for p in (cache.cache_path / "results").glob("*/*") if p.is_dir()):
        by_dim: dict[int, Path] = {}
        for meta_file in (revision_dir / "experiments").glob("*/model_meta.json"):
            stored = json.loads(meta_file.read_text(encoding="utf-8"))
            if set(stored.get("experiment_kwargs") or {}) == {"embed_dim"}:
                by_dim[int(stored["experiment_kwargs"]["embed_dim"])] = meta_file.parent
        if not by_dim:
            continue
        full = by_dim[max(by_dim)]
        stored = json.loads((full / "model_meta.json").read_text(encoding="utf-8"))
        stored.pop("is_cross_encoder", None)          # derived on writing; reading it back is deprecated
        meta = ModelMeta.model_validate_json_resolved(json.dumps(stored))
        meta = meta.model_copy(update={"experiment_kwargs": None, "embed_dim": sorted(by_dim, reverse=True)})
        settings = _encode_kwargs_by_task(full / "run_settings.jsonl")
        for result_file in sorted(full.glob("*.json")):
            if result_file.name == "model_meta.json":
                continue
            result = TaskResult.from_disk(result_file)
            cache.save_to_cache(result, meta, encode_kwargs=settings.get(result.task_name))
            written.append(cache.get_task_result_path(result.task_name, meta))
    return written


def _encode_kwargs_by_task(run_settings: Path) -> dict[str, Any]:
    if not run_settings.is_file():
        return {}
    lines = [json.loads(line) for line in run_settings.read_text(encoding="utf-8").splitlines() if line.strip()]
    return {line["task"]: line.get("encode_kwargs", {}) for line in lines}


def submission_notes(model_name: str, dims: Sequence[int], *, revision: str = "<Hub commit sha>",
                     base_model: str = "sentence-transformers/all-MiniLM-L6-v2",
                     task_name: str = "SciFact") -> str:
    """Markdown: how to get this model's MTEB results onto the leaderboard (``ModelMeta`` entry and
    ``ResultCache.submit_results``), for the published ``model_name`` and its trained ``dims``."""
    dims = [int(d) for d in dims]
    if not dims or any(d <= 0 for d in dims):
        raise ValueError(f"dims must be positive sizes, got {dims}")
    if "/" not in model_name:
        raise ValueError(f"model_name={model_name!r}: MTEB needs the Hub id 'organization/model'")
    folder = model_name.replace("/", "__")
    return f"""## Submitting to the MTEB leaderboard

The leaderboard takes results from the `embeddings-benchmark/results` repository only (not from model cards), for
tasks MTEB knows, under a model that has a `ModelMeta` in the `mteb` package. SMEC runs on local data that equals
`{task_name}` are scored under MTEB's own `{task_name}` task (its dataset revision is in each result file).

1. Push the exported model (`smec push`) and note the commit sha: the results and the `ModelMeta` use the Hub id
   `{model_name}` and that revision.
2. Add this entry to `mteb/models/model_implementations/` (a pull request to `embeddings-benchmark/mteb`). The head
   was trained on {task_name}'s train split, so `training_datasets` must name it (the leaderboard then does not
   count {task_name} as zero-shot for this model).

```python
from mteb.models.model_meta import ModelMeta, ScoringFunction
from mteb.models.sentence_transformer_wrapper import SentenceTransformerEncoderWrapper

model_meta = ModelMeta(
    loader=SentenceTransformerEncoderWrapper,   # embed_dim=k loads SentenceTransformer(..., truncate_dim=k)
    name="{model_name}",
    revision="{revision}",
    release_date=None,
    languages=["eng-Latn"],
    n_parameters=None,
    memory_usage_mb=None,
    max_tokens=None,
    embed_dim={dims},
    license=None,
    open_weights=True,
    public_training_code=None,                  # or the URL of the training code
    public_training_data=None,
    framework=["Sentence Transformers", "PyTorch"],
    reference="https://huggingface.co/{model_name}",
    similarity_fn_name=ScoringFunction.COSINE,
    use_instructions=False,
    training_datasets={{"{task_name}"}},
    adapted_from="{base_model}",
)
```

3. Evaluate with that entry, each size as its own experiment, and the full size ({max(dims)}) also without one:

```python
import mteb
cache = mteb.ResultCache("results")
tasks = [mteb.get_task("{task_name}")]       # or smec_hf.evaluation.mteb_official.official_task_for(local data)
mteb.evaluate(model_meta, tasks, cache=cache)                   # results/{folder}/<revision>/{task_name}.json
for k in {dims}:
    mteb.evaluate(model_meta.load_model(embed_dim=k), tasks, cache=cache)   # .../experiments/embed_dim_<k>/
```

   (`smec evaluate` writes the same layout under its `mteb/` folder; `promote_full_dimension` copies the full-size
   experiment to the default folder.) The leaderboard reads the default folder; per-size experiments are kept in
   the results repository, but no leaderboard view of them is confirmed, so also list the sizes in the model card.

4. Submit (this clones the results repository, so it needs network):

```python
cache.submit_results(model_meta, create_pr=False)   # commits the default-folder results on a new branch, prints
                                                    # what to push; create_pr=True opens the PR (pip install
                                                    # "mteb[github]", a GitHub token)
cache.submit_results([model_meta.model_copy(update={{"experiment_kwargs": {{"embed_dim": k}}}}) for k in {dims}])
                                                    # the per-size experiments
```

`ResultCache.submit_results(models=None, *, tasks=None, create_pr=False, message=None)` submits only scores the
repository lacks and skips results computed on another dataset revision. Results of a local task
(`LocalRetrieval-*`) cannot be submitted: MTEB does not know that task.
"""
