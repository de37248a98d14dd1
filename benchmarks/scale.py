"""``python -m benchmarks.scale``: `smec train` (and optionally `smec evaluate`) on structured synthetic sets of
growing size: per-phase wall time, peak memory, and the growth exponent of time in N.

For each N (default 100k, 300k, 1M documents; D 1024; 20k train / 2k test queries) the harness writes a structured
set (:func:`benchmarks.synthetic.write_structured_set`, reused when its ``set.json`` matches), runs
``smec train --data <set>/beir --embeddings <set>/cache`` with the package's defaults as a child process, and reads
back the phases that ``smec_run.json``'s ``timings_s`` holds (whatever keys are there, in their order) and each
stage's seconds. Memory is the child's: peak RSS (``getrusage`` of the waited child; it counts the pages of the
memory-mapped corpus file that were read, hence the comparison with the file's size) and the peak of its
anonymous memory (sampled from /proc every 0.2 s, summed over the child and its own children). The growth
exponent of each time is the least-squares slope of log(seconds) on log(N) over the sizes run.

Writes ``<workdir>/scale.json`` and ``<workdir>/scale.md`` and prints the table. Figures, not pass/fail; the sizes
the issue names take hours on 2 cores and ~6 GB of disk: run them on purpose (``make bench-scale``).
"""
from __future__ import annotations

import argparse
import json
import math
import resource
import shlex
import shutil
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from smec_hf.data.mining import MINED_DIR

from .common import machine, markdown_table
from .synthetic import Structure, structured_key, write_structured_set

DEFAULT_SIZES = (100_000, 300_000, 1_000_000)
EVALUATE_METHODS = ("smec", "matryoshka_adaptor", "pca", "truncation")
_MIB = 1 << 20


# --- memory of a child process tree --------------------------------------------------------------------------

def _status(pid: int) -> dict[str, int]:
    """The kB fields of /proc/<pid>/status (empty once the process is gone)."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return {}
    fields = {}
    for line in lines:
        name, _, value = line.partition(":")
        parts = value.split()
        if len(parts) == 2 and parts[1] == "kB":
            fields[name] = int(parts[0])
    return fields


def _descendants(root: int) -> list[int]:
    """``root`` and every process below it (read from /proc/*/stat)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        fields = text[text.rfind(")") + 2:].split()
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found


class TreeMemory:
    """Peak summed RSS / anonymous memory (MiB) of a process tree, sampled in a thread every ``interval`` s."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        self.pid, self.interval = pid, interval
        self.rss_mib = self.anon_mib = self.file_mib = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "TreeMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def sample(self) -> None:
        statuses = [_status(pid) for pid in _descendants(self.pid)]
        total = {k: sum(s.get(k, 0) for s in statuses) / 1024 for k in ("VmRSS", "RssAnon", "RssFile")}
        self.rss_mib = max(self.rss_mib, total["VmRSS"])
        self.anon_mib = max(self.anon_mib, total["RssAnon"])
        self.file_mib = max(self.file_mib, total["RssFile"])


def run_child(command: list[str], log: Path, env: dict[str, str] | None = None) -> dict:
    """Run ``command`` with output to ``log``; its wall time, exit code and memory peaks.

    ``peak_rss_mib`` is the largest single-process RSS of the child's tree (``getrusage(RUSAGE_CHILDREN)``,
    the waited children of this process; a run measured earlier in this process can only raise it, so the
    harness runs each command from a fresh ``measure`` process when more than one is run: see :func:`measure`).
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with log.open("w") as out:
        child = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
        with TreeMemory(child.pid) as tree:
            code = child.wait()
    wall = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"command": command, "returncode": code, "wall_s": wall, "peak_rss_mib": usage.ru_maxrss / 1024,
            "peak_tree_rss_mib": tree.rss_mib, "peak_tree_anon_mib": tree.anon_mib,
            "peak_tree_file_mib": tree.file_mib, "log": str(log)}


def measure(command: list[str], log: Path, env: dict[str, str] | None = None) -> dict:
    """:func:`run_child` in a fresh Python process, so that ``ru_maxrss`` covers this command alone."""
    script = ("import json, sys; from benchmarks.scale import run_child; "
              "print(json.dumps(run_child(json.loads(sys.argv[1]), __import__('pathlib').Path(sys.argv[2]))))")
    result = subprocess.run([sys.executable, "-c", script, json.dumps(command), str(log)], env=env,
                            capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1], check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


# --- one size ------------------------------------------------------------------------------------------------

def ensure_set(folder: Path, n_docs: int, dim: int, n_train: int, n_test: int, seed: int) -> tuple[dict, float]:
    """The structured set in ``folder`` (generated unless a complete one with the same key is there); seconds."""
    key = structured_key(n_docs, dim, n_train, n_test, seed, Structure())
    marker = folder / "set.json"
    if marker.is_file() and json.loads(marker.read_text()) == key:
        return key, 0.0
    shutil.rmtree(folder, ignore_errors=True)
    start = time.perf_counter()
    write_structured_set(folder, n_docs, dim, n_train, n_test, seed)
    return key, time.perf_counter() - start


def forget_mined(cache_dir: Path) -> None:
    """Delete the frozen rankings an earlier run saved beside the cache, so that every run mines (and is timed
    mining) as a first run on these vectors does."""
    shutil.rmtree(cache_dir / MINED_DIR, ignore_errors=True)


def smec_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "smec_hf.cli", *args]


def stage_seconds(run_dir: Path, run: dict) -> list[dict]:
    """Each stage's levels and seconds: ``smec_run.json``'s ``stages``, else the training log's "done" records."""
    if run.get("stages"):
        return [{"levels": st["levels"], "seconds": st["seconds"], "epochs": st.get("epochs_run")}
                for st in run["stages"]]
    log = run_dir / "training_log.jsonl"
    by_stage: dict[int, dict] = {}
    for line in log.read_text().splitlines() if log.is_file() else []:
        record = json.loads(line) if line.strip() else {}
        if record.get("done"):
            stage = by_stage.setdefault(record["stage"], {"levels": record["levels"], "seconds": 0.0})
            stage["seconds"] += record["seconds"]
    return [by_stage[s] for s in sorted(by_stage)]


def scores(run: dict, dims: tuple[int, ...] = ()) -> dict:
    """nDCG@10 on the test queries of the trained head, PCA and the frozen vectors (full dim)."""
    ndcg = run.get("results", {}).get("ndcg@10", {})
    out = {"frozen": next(iter(ndcg.get("frozen", {}).values()), None)}
    for method in (run.get("method", "smec"), "pca", "truncation"):
        if method in ndcg:
            out[method] = {d: v for d, v in ndcg[method].items() if not dims or int(d) in dims}
    return out


def run_size(n_docs: int, args: argparse.Namespace) -> dict:
    folder = args.workdir / "data" / f"N{n_docs}_D{args.dim}_s{args.seed}"
    key, generate_s = ensure_set(folder, n_docs, args.dim, args.train_queries, args.test_queries, args.seed)
    corpus_mib = (folder / "cache" / "corpus.npy").stat().st_size / _MIB
    print(f"[scale] N={n_docs:,}: set {'generated in %.1f s' % generate_s if generate_s else 'reused'} ({folder})",
          flush=True)
    data = ["--data", str(folder / "beir"), "--embeddings", str(folder / "cache"), "--no-progress"]
    extra = shlex.split(args.train_args)
    run_dir = args.workdir / "runs" / f"N{n_docs}" / "train"
    shutil.rmtree(run_dir, ignore_errors=True)             # a run folder that exists would be resumed, not rerun
    forget_mined(folder / "cache")
    train = measure(smec_command("train", *data, "--output", str(run_dir), *extra), run_dir.parent / "train.log")
    if train["returncode"] != 0:
        raise RuntimeError(f"smec train failed at N={n_docs} (exit {train['returncode']}): see {train['log']}")
    run = json.loads((run_dir / "smec_run.json").read_text())
    row = {"docs": n_docs, "dim": args.dim, "train_queries": args.train_queries, "test_queries": args.test_queries,
           "set": str(folder), "set_key": key, "generate_s": generate_s, "corpus_file_mib": corpus_mib,
           "train": {**train, "phases_s": run.get("timings_s", {}), "stages": stage_seconds(run_dir, run),
                     "ndcg@10": scores(run), "head_choice": (run.get("head_choice") or {}).get("shipped"),
                     "config": {k: run.get("config", {}).get(k) for k in ("search", "do_no_harm", "max_epochs")}}}
    print(f"[scale] N={n_docs:,}: smec train {train['wall_s']:.1f} s, peak RSS {train['peak_rss_mib']:,.0f} MiB "
          f"(corpus file {corpus_mib:,.0f} MiB), phases {_rounded(row['train']['phases_s'])}", flush=True)
    if args.evaluate:
        out = args.workdir / "runs" / f"N{n_docs}" / "evaluate"
        shutil.rmtree(out, ignore_errors=True)
        forget_mined(folder / "cache")
        evaluate = measure(smec_command("evaluate", *data, "--output", str(out), "--methods", *EVALUATE_METHODS,
                                        *shlex.split(args.evaluate_args or args.train_args)),
                           out.parent / "evaluate.log")
        if evaluate["returncode"] != 0:
            raise RuntimeError(f"smec evaluate failed at N={n_docs} (exit {evaluate['returncode']}): "
                               f"see {evaluate['log']}")
        report_file = out / "report.json"
        report = json.loads(report_file.read_text()) if report_file.is_file() else {}
        row["evaluate"] = {**evaluate, "phases_s": report.get("timings_s", {})}
        print(f"[scale] N={n_docs:,}: smec evaluate {evaluate['wall_s']:.1f} s, peak RSS "
              f"{evaluate['peak_rss_mib']:,.0f} MiB", flush=True)
    return row


def _rounded(phases: dict) -> dict:
    return {k: round(v, 1) if isinstance(v, (int, float)) else v for k, v in phases.items()}


# --- growth and the table ------------------------------------------------------------------------------------

def growth_exponent(sizes: list[float], seconds: list[float]) -> float | None:
    """Least-squares slope of log(seconds) on log(size); None with fewer than two distinct sizes or a time <= 0."""
    points = [(math.log(n), math.log(t)) for n, t in zip(sizes, seconds) if t and t > 0]
    if len({x for x, _ in points}) < 2:
        return None
    mx = sum(x for x, _ in points) / len(points)
    my = sum(y for _, y in points) / len(points)
    return sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x, _ in points)


def phase_names(rows: list[dict], command: str) -> list[str]:
    """Every phase key the runs recorded, in the order first found."""
    names: list[str] = []
    for row in rows:
        for name, value in row.get(command, {}).get("phases_s", {}).items():
            if name not in names and isinstance(value, (int, float)):
                names.append(name)
    return names


def outside_phases(wall: float, phases: dict) -> float | None:
    """Wall time the recorded phases leave out (start-up, imports, reading the data): the wall less ``total``
    where the command records one, else less the top-level phases (a key ``a_b`` is part of a key ``a``)."""
    numbers = {k: v for k, v in phases.items() if isinstance(v, (int, float))}
    if not numbers:
        return None
    if "total" in numbers:
        return wall - numbers["total"]
    return wall - sum(v for k, v in numbers.items() if not any(k.startswith(j + "_") for j in numbers if j != k))


def series(rows: list[dict], command: str) -> dict[str, list[float | None]]:
    """Time series by name: the command's wall time, what its phases leave out, its phases, and (train) each
    stage by its levels."""
    out = {"wall": [r[command]["wall_s"] for r in rows],
           "outside the phases": [outside_phases(r[command]["wall_s"], r[command]["phases_s"]) for r in rows]}
    for name in phase_names(rows, command):
        out[name] = [r[command]["phases_s"].get(name) for r in rows]
    if command == "train":
        levels = []
        for r in rows:
            levels += [tuple(st["levels"]) for st in r["train"]["stages"] if tuple(st["levels"]) not in levels]
        for lv in levels:
            out[f"stage {lv[0]}->{lv[1]}"] = [
                next((st["seconds"] for st in r["train"]["stages"] if tuple(st["levels"]) == lv), None) for r in rows]
    return out


def exponents(rows: list[dict], command: str) -> dict[str, float | None]:
    sizes = [r["docs"] for r in rows]
    result = {}
    for name, values in series(rows, command).items():
        pairs = [(n, v) for n, v in zip(sizes, values) if v is not None]
        result[name] = growth_exponent([n for n, _ in pairs], [v for _, v in pairs])
    return result


def _fmt(value: float | None, digits: int = 1) -> str:
    return "" if value is None else f"{value:,.{digits}f}"


def command_table(rows: list[dict], command: str) -> str:
    """Rows: each time (wall, phases, stages); columns: each N, then the growth exponent."""
    growth = exponents(rows, command)
    header = ["seconds", *[f"N={r['docs']:,}" for r in rows], "exponent in N"]
    body = [[name, *[_fmt(v) for v in values], _fmt(growth[name], 2)]
            for name, values in series(rows, command).items()]
    body += [["peak RSS MiB (largest process)", *[_fmt(r[command]["peak_rss_mib"], 0) for r in rows], ""],
             ["peak RSS - corpus file MiB", *[_fmt(r[command]["peak_rss_mib"] - r["corpus_file_mib"], 0)
                                               for r in rows], ""],
             ["peak anonymous MiB (process tree)", *[_fmt(r[command]["peak_tree_anon_mib"], 0) for r in rows], ""],
             ["corpus file MiB", *[_fmt(r["corpus_file_mib"], 0) for r in rows], ""]]
    return markdown_table(header, body)


def format_report(report: dict) -> str:
    m, rows = report["machine"], report["rows"]
    lines = [f"Machine: {m['cpu']}, {m['cores']} cores ({m['torch_threads']} torch threads), {m['ram_gib']} GiB RAM, "
             f"GPU: {m['gpu'] or 'none'}; torch {m['torch']}, faiss {m.get('faiss') or 'not installed'}; load "
             f"average at start {m['load_average_at_start']}; {report['date']}.",
             f"Structured synthetic sets (benchmarks.synthetic.write_structured_set), D={report['dim']}, "
             f"{report['train_queries']:,} train / {report['test_queries']:,} test queries, seed {report['seed']}; "
             f"`smec train` {' '.join(report['train_args']) or 'with the defaults'}. Exponent: least-squares slope "
             "of log(seconds) on log(N).", "", "`smec train`:", command_table(rows, "train"), ""]
    quality = [[f"{r['docs']:,}", _fmt(r["train"]["ndcg@10"].get("frozen"), 4),
                *[_fmt(r["train"]["ndcg@10"].get(method, {}).get(str(d)), 4)
                  for method in ("smec", "pca") for d in (64, 32)], r["train"].get("head_choice") or ""]
               for r in rows]
    lines += ["Test nDCG@10 (what was trained, to see the set behaves like retrieval data):",
              markdown_table(["N", "frozen full dim", "SMEC 64", "SMEC 32", "PCA 64", "PCA 32", "shipped head"],
                             quality), ""]
    if all("evaluate" in r for r in rows):
        lines += [f"`smec evaluate --methods {' '.join(EVALUATE_METHODS)}`:", command_table(rows, "evaluate"), ""]
    lines.append(f"Set generation s: " + ", ".join(f"N={r['docs']:,}: {'reused' if not r['generate_s'] else _fmt(r['generate_s'])}"
                                                   for r in rows) + f". Total {report['total_s']:.0f} s.")
    return "\n".join(lines)


def machine_info() -> dict:
    info = machine()
    try:
        import faiss
        info["faiss"] = faiss.__version__
    except ImportError:
        info["faiss"] = None
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scale", description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(DEFAULT_SIZES), help="corpus sizes N")
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--train-queries", type=int, default=20_000)
    parser.add_argument("--test-queries", type=int, default=2_000)
    parser.add_argument("--seed", type=int, default=0, help="of the generated sets")
    parser.add_argument("--workdir", type=Path, default=Path("outputs/bench/scale"),
                        help="sets under data/, runs under runs/, scale.json and scale.md")
    parser.add_argument("--train-args", default="",
                        help="extra `smec train` arguments as one string, e.g. '--max-epochs 2' (default: none, "
                        "the package's defaults)")
    parser.add_argument("--evaluate", action="store_true",
                        help=f"also time `smec evaluate --methods {' '.join(EVALUATE_METHODS)}` at each N")
    parser.add_argument("--evaluate-args", default=None, help="extra `smec evaluate` arguments (default: --train-args)")
    args = parser.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    report = {"machine": machine_info(), "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "dim": args.dim, "train_queries": args.train_queries, "test_queries": args.test_queries,
              "seed": args.seed, "train_args": shlex.split(args.train_args), "rows": []}
    for n_docs in sorted(args.sizes):
        report["rows"].append(run_size(n_docs, args))
        report["total_s"] = time.perf_counter() - started
        for command in ("train", "evaluate"):
            if all(command in r for r in report["rows"]):
                report[f"{command}_exponents"] = exponents(report["rows"], command)
        (args.workdir / "scale.json").write_text(json.dumps(report, indent=2))   # after every size: partial results
    text = format_report(report)
    (args.workdir / "scale.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
