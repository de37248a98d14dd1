"""What every benchmark shares: medians of repeated timings, peak-memory sampling, the machine's description."""
from __future__ import annotations

import os
import platform
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch


def median_seconds(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median wall time of ``fn`` over ``repeats`` calls, after ``warmup`` untimed ones (caches, lazy init)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


@dataclass
class MemoryPeak:
    """Peak resident and anonymous memory above the level at ``start`` (MiB), sampled every 20 ms.

    Anonymous memory is what the process allocated itself; resident memory also counts the pages of
    memory-mapped files that were read, which the kernel can drop again. A corpus that trains "without
    being loaded whole" shows up as a small anonymous peak, whatever the file size.
    """

    rss_mib: float = 0.0
    anon_mib: float = 0.0

    def __enter__(self) -> "MemoryPeak":
        self._base = (_status_kib("VmRSS"), _status_kib("RssAnon"))
        self._peak = list(self._base)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self._sample_once()

    def _sample_once(self) -> None:
        self._peak = [max(p, _status_kib(f)) for p, f in zip(self._peak, ("VmRSS", "RssAnon"))]

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample_once()
        self.rss_mib = (self._peak[0] - self._base[0]) / 1024
        self.anon_mib = (self._peak[1] - self._base[1]) / 1024


def machine() -> dict:
    """The facts a reader needs to compare these figures with their own."""
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "unknown")
    mem_kib = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal"))
    return {"cpu": cpu, "cores": len(os.sched_getaffinity(0)), "torch_threads": torch.get_num_threads(),
            "ram_gib": round(mem_kib / 2**20, 1), "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "python": platform.python_version(), "torch": torch.__version__}


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def shared_dataset(name: str) -> Path:
    """A dataset of the shared data folder beside the repository (``../shared/data``, or ``SMEC_SHARED_DATA``)."""
    root = Path(os.environ.get("SMEC_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
    return root / name
