"""Start-up time of the ``smec`` command (``smec --help``): a figure, not a test (the package imports torch,
transformers and datasets lazily, so a command that does not need them should not pay for them).

Run: ``python -m benchmarks.startup [--repeats N]``; prints the median wall time of a fresh interpreter.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time


def startup_seconds(repeats: int = 5, argv: tuple[str, ...] = ("--help",)) -> float:
    """Median wall time of ``python -m smec_hf.cli <argv>`` in a new process."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "smec_hf.cli", *argv], check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    for argv in (("--help",), ("train", "--help")):
        print(f"smec {' '.join(argv)}: {startup_seconds(args.repeats, argv):.2f} s (median of {args.repeats})")


if __name__ == "__main__":
    main()
