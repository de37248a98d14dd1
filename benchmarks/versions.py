"""``python -m benchmarks.versions BEFORE AFTER``: one method's ``benchmarks.seeds`` runs from two versions of the
code, paired: after minus before at every dimension, over the seeds both ran and over the queries.

Run ``python -m benchmarks.seeds --methods smec --output BEFORE`` from a checkout of the older commit and again
with ``--output AFTER`` from the newer one (same seeds and settings), then this. A change that should leave
quality alone passes when no interval excludes 0.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Sequence

from .common import markdown_table
from .seeds import SPLITS, _stored_run, interval_markdown, mean_table, paired_intervals


def load_runs(output: Path, method: str, label: str) -> list[dict]:
    """The finished runs of ``method`` under ``output/runs/``, renamed ``label``."""
    paths = sorted((output / "runs").glob(f"{method}-seed*.json"))
    if not paths:
        raise FileNotFoundError(f"{output / 'runs'} holds no {method} run: run benchmarks.seeds --output {output}")
    return [{**_stored_run(path, json.loads(path.read_text())["key"]), "method": label} for path in paths]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.versions", description=__doc__.split("\n\n")[0])
    parser.add_argument("before", type=Path, help="benchmarks.seeds --output folder of the older code")
    parser.add_argument("after", type=Path, help="benchmarks.seeds --output folder of the newer code")
    parser.add_argument("--method", default="smec")
    args = parser.parse_args(argv)
    records = load_runs(args.after, args.method, "after") + load_runs(args.before, args.method, "before")
    for split in SPLITS:
        header, rows = mean_table(records, split)
        if rows:
            print(f"\nmean nDCG@10 of {args.method} on {split} queries\n")
            print(markdown_table(header, rows))
            print("\n" + interval_markdown(paired_intervals(records, split, "after"), split, "after"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
