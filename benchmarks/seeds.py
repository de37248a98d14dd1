"""``python -m benchmarks.seeds``: the compared methods over several seeds, on test queries and a validation fold.

One seed moves SciFact's 32-d nDCG@10 by about ±0.03, so one run cannot rank methods a few hundredths
apart. This trains every method with every seed on a dataset's embedding cache (SciFact by default;
``--data squad-v1.1-dev`` or any BEIR folder; the cache is encoded once and reused) and prints the mean
nDCG@10 per dimension on

* **test** queries (what the report scores), and
* a **validation fold**: train queries that neither the method nor its early stopping saw, held out like the
  early-stopping ones (``--set group_by=...``: single queries by default, ``positive`` by relevant document,
  ``article`` on SQuAD). Early stopping
  keeps the epoch with the best held-out score, so held-out scores are optimistic, and more so for a method
  that is scored more often; the validation fold is not. The README compares the methods there.

On both it then prints, for ``--reference`` (SMEC) minus every method at every dimension, the paired
difference with two 95% intervals (``smec_hf.evaluation.intervals``), ``*`` where one excludes 0:

* **over seeds**: a t-interval of the per-seed differences of mean nDCG@10 (seed noise; needs 2 seeds);
* **over queries**: a paired bootstrap of the per-query differences, each query's score first averaged over
  the seeds that scored it (query-sampling noise). On test every seed scores every query, so its difference
  is the seeds' mean difference; each seed's validation fold is its own sample of train queries, so there a
  query counts once, averaged over the folds it fell in.

``--floor METHOD...`` also reports those methods held to SMEC's do-no-harm floor (``METHOD+floor``: PCA's run in
the seeds where the method scored below PCA at some size on its own early-stopping queries), so that SMEC, which
applies that floor to itself, is also compared with baselines under the same guarantee.

``--validation-fraction 0`` trains on every train query, as ``make demo`` does (then only test is scored).
Each finished run is kept under ``OUTPUT/runs/``: run it again (after an interruption, or with more ``--seeds`` or
``--methods``) and only the missing runs train.
Figures, not a test. On 2 cores, with SMEC's per-stage search (five trainings of every stage), all nine methods
took 30 minutes for 5 seeds on SciFact (SMEC 5-8 minutes a seed); on SQuAD seven of them took 90 (SMEC 16-27
minutes a seed).
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import shutil
import statistics
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

import smec_hf
from smec_hf.core.config import FitConfig
from smec_hf.core.io import atomic_write_json
from smec_hf.smec.settings import SMECSettings
from smec_hf.data import default_base_model, load_or_encode, load_retrieval_data
from smec_hf.data.beir import RetrievalData
from smec_hf.data.examples import fit_and_held_out_ids, split_for
from smec_hf.data.cache import EmbeddingCache
from smec_hf import registry
from smec_hf.pipelines.fitting import FitJob, FitResult, default_workers, run_fit_jobs
from smec_hf.pipelines.train import with_groups
from smec_hf.core.retrieval import per_query_ndcg_by_dim
from smec_hf.smec.no_harm import below_floor
from smec_hf.evaluation.intervals import paired_bootstrap, seed_interval
from smec_hf.smec.chain import default_dimension_path

from .common import machine, markdown_table, shared_dataset

VALIDATION_SEED_OFFSET = 10_000   # the fold's hash seed, apart from the early-stopping split's (the run's seed)
CONFIDENCE = 0.95
N_RESAMPLES = 2000                # bootstrap resamples (seeded: the intervals are deterministic)
SPLITS = ("test", "validation")  # the splits the tables and intervals compare
HELD_OUT = "held_out"             # also scored: every method's early-stopping queries, what --floor decides on
FLOOR = "pca"                     # what --floor falls back to
FLOOR_SUFFIX = "+floor"

Qrels = Mapping[str, Mapping[str, int]]


def validation_split(train_qrels: Qrels, fraction: float, seed: int, group_by: str = FitConfig.group_by,
                     groups: Mapping[str, str] | None = None) -> tuple[dict, dict]:
    """``(fit qrels, validation qrels)``: a ``fraction`` of the train queries' groups (``FitConfig.group_by``) that
    training never sees, so the fold, like a test split by topic, asks about documents no fitted query touched."""
    fit_ids, validation_ids = fit_and_held_out_ids(train_qrels, train_qrels, fraction, VALIDATION_SEED_OFFSET + seed,
                                                   group_by, groups)
    return {q: dict(train_qrels[q]) for q in fit_ids}, {q: dict(train_qrels[q]) for q in validation_ids}


def source_digest() -> str:
    """A short hash of the package's Python source: the code a stored run was trained with."""
    digest = hashlib.sha256()
    package = Path(smec_hf.__file__).parent
    for path in sorted(package.rglob("*.py")):
        digest.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def _stored_run(path: Path, key: Mapping[str, Any]) -> dict | None:
    """The run stored at ``path`` if it was made with the same ``key`` (settings, fold, cache, qrels), else None; the
    JSON's string dims become ints again."""
    if not path.exists():
        return None
    try:
        stored = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not a stored run ({error}); delete it to train that run again") from None
    if stored.get("key") != key:
        return None
    record = stored["record"]
    for split in (*SPLITS, HELD_OUT):
        if split in record:
            record[split] = {int(d): v for d, v in record[split].items()}
    for split, by_dim in record["per_query"].items():
        record["per_query"][split] = {int(d): v for d, v in by_dim.items()}
    return record


def floored(records: Sequence[dict], methods: Sequence[str], floor: str = FLOOR) -> list[dict]:
    """Each of ``methods`` held to SMEC's do-no-harm rule (:mod:`smec_hf.smec.no_harm`), one record per seed named
    ``<method>+floor``: the method's run where it scored at or above ``floor`` at every size on its own
    early-stopping held-out queries (never the fold or test), else ``floor``'s run. ``"kept"`` says which.

    SMEC applies the rule itself when it trains; this puts the baselines under the same guarantee, so that a
    difference between them is not the guarantee's price."""
    by_run = {(r["method"], r["seed"]): r for r in records}
    derived = []
    for method in methods:
        for seed in [seed for name, seed in by_run if name == method]:
            record, reference = by_run[method, seed], by_run.get((floor, seed))
            missing = [f"{m}-seed{seed}" for m, r in ((method, record), (floor, reference)) if HELD_OUT not in (r or {})]
            if missing:
                raise ValueError(f"--floor {method}: no {HELD_OUT} scores for {', '.join(missing)} (train {floor} too, "
                                 f"and pass both to run_seeds' held_out_for)")
            keep = not below_floor(record[HELD_OUT], reference[HELD_OUT])
            derived.append({**(record if keep else reference), "method": method + FLOOR_SUFFIX, "seed": seed,
                            "kept": method if keep else floor})
    return derived


def run_seeds(cache: EmbeddingCache, dataset: RetrievalData, methods: Sequence[str], seeds: Sequence[int],
              validation_fraction: float, work_dir: Path, base_model: str, workers: int = 1,
              dims: Sequence[int] | None = None, overrides: Mapping[str, Any] | None = None,
              runs_dir: Path | None = None, held_out_for: Sequence[str] = ()) -> list[dict]:
    """Train every (seed, method) pair (in parallel over ``workers`` processes); one record per pair:
    mean nDCG@10 per dim on ``"test"`` (and ``"validation"``), the per-query scores under ``"per_query"``.

    ``overrides`` replace :class:`SMECSettings` defaults (e.g. ``{"ema_decay": 0.9}``) for every method.
    ``runs_dir``: each run is written there (``<method>-seed<seed>.json``, atomically) as soon as it is scored, and
    a run found there with the same settings, fold, cache and qrels is read back instead of trained again, so an
    interrupted benchmark, or one given more seeds or methods, trains only what is missing. A stored run keeps the
    hash of the source that trained it (``"source"``); :func:`main` warns when that is not today's. Every run is
    also scored on ``"held_out"``, the early-stopping queries (for :func:`floored`); a stored run from before that
    was kept is reused, except for the methods in ``held_out_for``, which train again."""
    dims = list(dims or default_dimension_path(cache.dim))
    base_settings = SMECSettings(**(overrides or {}))
    qrels_digest = hashlib.sha256(json.dumps(dataset.qrels, sort_keys=True).encode()).hexdigest()[:12]
    shared_key = {"cache": cache.path.name if cache.path is not None else None, "qrels": qrels_digest, "dims": dims,
                  "validation_fraction": validation_fraction,
                  "overrides": {k: v for k, v in (overrides or {}).items() if k != "query_groups"}}
    source = source_digest()
    records: dict[tuple[str, int], dict] = {}
    jobs, folds, keys = [], {}, {}
    for seed in seeds:
        fit_qrels, validation_qrels = (validation_split(dataset.qrels["train"], validation_fraction, seed,
                                                        base_settings.group_by, base_settings.query_groups)
                                       if validation_fraction else (dataset.qrels["train"], {}))
        fit_data = dataclasses.replace(dataset, qrels={**dataset.qrels, "train": fit_qrels})
        settings = SMECSettings(**{**(overrides or {}), "dims": dims, "seed": seed})
        held_ids = split_for(FitConfig.fit_part(settings), fit_qrels, cache.query_ids)[1]   # one split for all methods
        folds[seed] = {"test": dataset.qrels["test"], "validation": validation_qrels,
                       HELD_OUT: {q: dict(fit_qrels[q]) for q in held_ids}}
        for name in methods:
            keys[name, seed] = {**shared_key, "method": name, "seed": seed}
            stored = _stored_run(runs_dir / f"{name}-seed{seed}.json", keys[name, seed]) if runs_dir else None
            if stored is not None and (HELD_OUT in stored or name not in held_out_for):
                records[name, seed] = stored
                continue
            jobs.append(FitJob(name, cache, fit_data, work_dir / f"seed{seed}" / name, dims, settings, None,
                               base_model, None, show_progress_bar=False))

    def score(i: int, result: FitResult) -> None:
        job, (compressor, _, seconds) = jobs[i], result
        seed = job.settings.seed
        record: dict[str, Any] = {"method": job.name, "seed": seed, "seconds": round(seconds, 1), "source": source}
        per_query = {split: per_query_ndcg_by_dim(compressor.transform, cache, qrels, dims)
                     for split, qrels in folds[seed].items() if qrels}
        for split, by_dim in per_query.items():
            record[split] = {dim: float(np.mean(list(scores.values()))) for dim, scores in by_dim.items()}
        record["per_query"] = per_query
        records[job.name, seed] = record
        if runs_dir is not None:
            atomic_write_json(runs_dir / f"{job.name}-seed{seed}.json", {"key": keys[job.name, seed], "record": record},
                              indent=None)

    run_fit_jobs(jobs, workers, on_done=score)
    return [records[name, seed] for seed in seeds for name in methods]


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``["ema_decay=0.9", "use_ads=false"]`` -> ``{"ema_decay": 0.9, "use_ads": False}`` (values as JSON, else text)."""
    fields = {f.name for f in dataclasses.fields(SMECSettings)} - {"dims", "seed"}
    overrides = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or name not in fields:
            raise ValueError(f"--set {item!r}: expected NAME=VALUE with NAME one of {', '.join(sorted(fields))}")
        try:
            overrides[name] = json.loads(value)
        except json.JSONDecodeError:
            overrides[name] = value
    SMECSettings(**overrides)   # fail here, naming the bad value, rather than in a worker
    return overrides


def mean_table(records: Sequence[dict], split: str) -> tuple[list[str], list[list[str]]]:
    """Mean nDCG@10 per method and dimension on ``split`` ("test" or "validation"), with the seed count."""
    methods = list(dict.fromkeys(r["method"] for r in records if split in r))
    dims = sorted({d for r in records if split in r for d in r[split]}, reverse=True)
    rows = []
    for method in methods:
        mine = [r[split] for r in records if r["method"] == method and split in r]
        rows.append([method, str(len(mine))] + [f"{statistics.mean(s[d] for s in mine):.3f}" for d in dims])
    return ["method", "seeds"] + [str(d) for d in dims], rows


def _pooled(records: Sequence[dict], split: str, dim: int) -> dict[str, float]:
    """Each query's nDCG@10 averaged over the ``records`` (seeds) that scored it on ``split``."""
    scores = defaultdict(list)
    for record in records:
        for query, score in record["per_query"][split][dim].items():
            scores[query].append(score)
    return {query: statistics.fmean(values) for query, values in scores.items()}


def paired_intervals(records: Sequence[dict], split: str, reference: str = "smec") -> dict[str, dict]:
    """``{"seeds": {method: {str(dim): interval}}, "queries": {...}}``: ``reference`` minus each method (itself
    included: exactly 0) on ``split``, paired over the seeds both ran; an interval is ``Interval.as_dict()``.
    ``"seeds"`` (a t-interval of the per-seed differences) is left out for methods with fewer than 2 seeds."""
    scored = {(r["method"], r["seed"]): r for r in records if split in r}
    methods = list(dict.fromkeys(method for method, _ in scored))
    if reference not in methods:
        raise ValueError(f"reference method {reference!r} has no {split} scores; methods: {methods}")
    reference_seeds = [seed for method, seed in scored if method == reference]
    dims = sorted(scored[reference, reference_seeds[0]][split], reverse=True)
    table: dict[str, dict] = {"seeds": {}, "queries": {}}
    for method in methods:
        seeds = [seed for seed in reference_seeds if (method, seed) in scored]
        mine, theirs = [scored[reference, s] for s in seeds], [scored[method, s] for s in seeds]
        missing = [d for d in dims if any(d not in r[split] for r in theirs)]
        if missing:
            raise ValueError(f"method {method!r} has no {split} scores at dims {missing}")
        for dim in dims:
            if len(seeds) >= 2:
                diffs = [a[split][dim] - b[split][dim] for a, b in zip(mine, theirs)]
                table["seeds"].setdefault(method, {})[str(dim)] = seed_interval(diffs, CONFIDENCE).as_dict()
            table["queries"].setdefault(method, {})[str(dim)] = paired_bootstrap(
                _pooled(mine, split, dim), _pooled(theirs, split, dim), N_RESAMPLES, 0, CONFIDENCE).as_dict()
    return {kind: by_method for kind, by_method in table.items() if by_method}


def interval_markdown(intervals: Mapping[str, Mapping[str, Mapping[str, Mapping]]], split: str,
                      reference: str = "smec") -> str:
    """:func:`paired_intervals` as markdown, one table per kind: ``diff [low, high]``, ``*`` where significant."""
    what = {"seeds": "t-interval over seeds of the per-seed differences",
            "queries": "paired bootstrap over queries, each averaged over seeds"}
    blocks = []
    for kind, by_method in intervals.items():
        dims = list(next(iter(by_method.values())))
        rows = [[method] + [f"{c['diff']:+.4f} [{c['low']:+.4f}, {c['high']:+.4f}]{'*' if c['significant'] else ''}"
                            for c in (cells[d] for d in dims)] for method, cells in by_method.items()]
        blocks.append(f"{reference} minus each method, nDCG@10 on {split} queries: {CONFIDENCE:.0%} {what[kind]}; "
                      f"* the interval excludes 0\n\n" + markdown_table(["method"] + dims, rows))
    return "\n\n".join(blocks)


def write_report(path: Path, records: Sequence[dict], reference: str, **settings: Any) -> dict:
    """Write ``seeds.json`` to ``path``: ``settings``, the machine, every run's means (the per-query scores stay
    out: 5,173 SQuAD test queries x dims x runs) and, where ``reference`` ran, ``"intervals"``:
    ``{"reference", "confidence", "n_resamples", split: paired_intervals(...)}``. Returns what it wrote."""
    report: dict[str, Any] = {"machine": machine(), **settings,
                              "runs": [{k: v for k, v in r.items() if k != "per_query"} for r in records]}
    if any(r["method"] == reference for r in records):
        report["intervals"] = {"reference": reference, "confidence": CONFIDENCE, "n_resamples": N_RESAMPLES,
                               **{split: paired_intervals(records, split, reference)
                                  for split in SPLITS if any(split in r for r in records)}}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1))
    return report


def dataset_path(text: str) -> Path:
    """``--data``: a folder, else the name of one in the shared data folder (``squad-v1.1-dev``)."""
    path = Path(text).expanduser()
    if path.exists():
        return path
    shared = shared_dataset(text)
    if shared.exists():
        return shared
    raise argparse.ArgumentTypeError(f"no dataset at {path} nor {shared}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.seeds", description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", default=["smec", "matryoshka_adaptor", "mrl_joint"],
                        choices=registry.NAMES)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--validation-fraction", type=float, default=0.2,
                        help="share of train queries kept out of training for the validation fold (0: none)")
    parser.add_argument("--workers", type=int, default=default_workers())
    parser.add_argument("--set", nargs="+", default=[], metavar="NAME=VALUE", dest="overrides",
                        help="SMEC training settings for every method, e.g. --set ema_decay=0.9 (default: the defaults)")
    parser.add_argument("--data", type=dataset_path, default=shared_dataset("scifact"),
                        help="BEIR folder, or a shared dataset's name such as squad-v1.1-dev (default: %(default)s)")
    parser.add_argument("--reference", default="smec", choices=registry.NAMES,
                        help="the method the paired intervals subtract every method from (default: %(default)s)")
    parser.add_argument("--output", type=Path, default=Path("outputs/seeds"),
                        help="writes seeds.json there, and each finished run under runs/ (default: %(default)s)")
    parser.add_argument("--floor", nargs="+", default=[], choices=registry.NAMES, metavar="METHOD",
                        help=f"also report these methods held to SMEC's do-no-harm floor, as METHOD{FLOOR_SUFFIX}: "
                             f"{FLOOR} in the seeds where the method scored below it at some size on its own "
                             f"early-stopping queries ({FLOOR} is trained too)")
    parser.add_argument("--fresh", action="store_true",
                        help="train every run again instead of reusing the finished ones under OUTPUT/runs/")
    args = parser.parse_args(argv)
    if not 0 <= args.validation_fraction < 1:
        parser.error(f"--validation-fraction must be in [0, 1), got {args.validation_fraction}")
    try:
        overrides = parse_overrides(args.overrides)
    except ValueError as error:
        parser.error(str(error))

    methods = registry.ordered(set(args.methods) | ({FLOOR} if args.floor else set()) | set(args.floor))
    base = default_base_model()
    dataset = load_retrieval_data(args.data)
    groups = with_groups(SMECSettings(**overrides), args.data, dataset).query_groups   # --set group_by=FIELD
    if groups is not None:
        overrides["query_groups"] = groups
    cache = load_or_encode(dataset, base, "~/.cache/smec_hf/embeddings")
    runs_dir = args.output / "runs"
    if args.fresh and runs_dir.exists():
        shutil.rmtree(runs_dir)
    with tempfile.TemporaryDirectory() as work:
        records = run_seeds(cache, dataset, methods, args.seeds, args.validation_fraction, Path(work), base,
                            args.workers, overrides=overrides, runs_dir=runs_dir, held_out_for=[*args.floor, FLOOR]
                            if args.floor else ())
    source = source_digest()
    older = [f"{r['method']}-seed{r['seed']}" for r in records if r["source"] != source]
    if older:
        print(f"warning: {len(older)} runs reused from {runs_dir} were trained by other source code "
              f"({', '.join(older)}); --fresh trains them again", file=sys.stderr)
    held = floored(records, args.floor)
    for method in args.floor:
        kept = {r["seed"]: r["kept"] for r in held if r["method"] == method + FLOOR_SUFFIX}
        print(f"{method}{FLOOR_SUFFIX}: " + ", ".join(f"seed {seed} {name}" for seed, name in kept.items()))
    records += held
    report = write_report(args.output / "seeds.json", records, args.reference, data=str(args.data),
                          validation_fraction=args.validation_fraction,
                          overrides={k: v for k, v in overrides.items() if k != "query_groups"})
    for split in SPLITS:
        header, rows = mean_table(records, split)
        if rows:
            print(f"\nmean nDCG@10 on {split} queries (seeds {' '.join(map(str, args.seeds))})\n")
            print(markdown_table(header, rows))
    for split in SPLITS:
        if split in report.get("intervals", {}):
            print("\n" + interval_markdown(report["intervals"][split], split, args.reference))
    if "intervals" not in report:
        print(f"\nno paired intervals: --reference {args.reference} is not among --methods")
    print(f"\nper-seed figures: {args.output / 'seeds.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
