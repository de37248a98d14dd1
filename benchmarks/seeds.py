"""``python -m benchmarks.seeds``: the compared methods over several seeds, on test queries and a validation fold.

One seed moves SciFact's 32-d nDCG@10 by about ±0.03, so one run cannot rank methods a few hundredths
apart. This trains every method with every seed on the SciFact cache and prints the mean nDCG@10 per
dimension on

* **test** queries (what the report scores), and
* a **validation fold**: train queries that neither the method nor its early stopping saw. Early stopping
  keeps the epoch with the best held-out score, so held-out scores are optimistic, and more so for a method
  that is scored more often; the validation fold is not. The README compares the methods there.

``--validation-fraction 0`` trains on every train query, as ``make demo`` does (then only test is scored).
Figures, not a test. On 2 cores the defaults (3 methods x 5 seeds) took 9 minutes; 5 methods on every train
query, 18.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

from smec_hf.smec.settings import SMECSettings
from smec_hf.data import default_base_model, load_or_encode, load_retrieval_data
from smec_hf.data.beir import RetrievalData, held_out_split
from smec_hf.data.cache import EmbeddingCache
from smec_hf import registry
from smec_hf.pipelines.fitting import FitJob, default_workers, run_fit_jobs
from smec_hf.core.retrieval import ndcg_by_dim
from smec_hf.smec.chain import default_dimension_path

from .common import machine, markdown_table, shared_dataset

VALIDATION_SEED_OFFSET = 10_000   # the fold's hash seed, apart from the early-stopping split's (the run's seed)

Qrels = Mapping[str, Mapping[str, int]]


def validation_split(train_qrels: Qrels, fraction: float, seed: int) -> tuple[dict, dict]:
    """``(fit qrels, validation qrels)``: a ``fraction`` of the train queries that training never sees."""
    fit_ids, validation_ids = held_out_split(sorted(train_qrels), fraction, VALIDATION_SEED_OFFSET + seed)
    return {q: dict(train_qrels[q]) for q in fit_ids}, {q: dict(train_qrels[q]) for q in validation_ids}


def run_seeds(cache: EmbeddingCache, dataset: RetrievalData, methods: Sequence[str], seeds: Sequence[int],
              validation_fraction: float, work_dir: Path, base_model: str, workers: int = 1,
              dims: Sequence[int] | None = None, overrides: Mapping[str, Any] | None = None) -> list[dict]:
    """Train every (seed, method) pair (in parallel over ``workers`` processes); one record per pair.

    ``overrides`` replace :class:`SMECSettings` defaults (e.g. ``{"ema_decay": 0.9}``) for every method."""
    dims = list(dims or default_dimension_path(cache.dim))
    jobs, folds = [], {}
    for seed in seeds:
        fit_qrels, validation_qrels = (validation_split(dataset.qrels["train"], validation_fraction, seed)
                                       if validation_fraction else (dataset.qrels["train"], {}))
        folds[seed] = validation_qrels
        fit_data = dataclasses.replace(dataset, qrels={**dataset.qrels, "train": fit_qrels})
        settings = SMECSettings(**{**(overrides or {}), "dims": dims, "seed": seed})
        jobs += [FitJob(name, cache, fit_data, work_dir / f"seed{seed}" / name, dims, settings, None, base_model,
                        None, show_progress_bar=False) for name in methods]
    records = []
    for job, (compressor, _, seconds) in zip(jobs, run_fit_jobs(jobs, workers)):
        record = {"method": job.name, "seed": job.settings.seed, "seconds": round(seconds, 1),
                  "test": ndcg_by_dim(compressor.transform, cache, dataset.qrels["test"], dims)}
        if folds[job.settings.seed]:
            record["validation"] = ndcg_by_dim(compressor.transform, cache, folds[job.settings.seed], dims)
        records.append(record)
    return records


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
    parser.add_argument("--data", type=Path, default=shared_dataset("scifact"),
                        help="BEIR folder (default: %(default)s)")
    parser.add_argument("--output", type=Path, default=Path("outputs/seeds"))
    args = parser.parse_args(argv)
    if not 0 <= args.validation_fraction < 1:
        parser.error(f"--validation-fraction must be in [0, 1), got {args.validation_fraction}")
    try:
        overrides = parse_overrides(args.overrides)
    except ValueError as error:
        parser.error(str(error))

    base = default_base_model()
    dataset = load_retrieval_data(args.data)
    cache = load_or_encode(dataset, base, "~/.cache/smec_hf/embeddings")
    with tempfile.TemporaryDirectory() as work:
        records = run_seeds(cache, dataset, args.methods, args.seeds, args.validation_fraction, Path(work), base,
                            args.workers, overrides=overrides)
    args.output.mkdir(parents=True, exist_ok=True)
    report = {"machine": machine(), "validation_fraction": args.validation_fraction, "overrides": overrides,
              "runs": records}
    (args.output / "seeds.json").write_text(json.dumps(report, indent=1))
    for split in ("test", "validation"):
        header, rows = mean_table(records, split)
        if rows:
            print(f"\nmean nDCG@10 on {split} queries (seeds {' '.join(map(str, args.seeds))})\n")
            print(markdown_table(header, rows))
    print(f"\nper-seed figures: {args.output / 'seeds.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
