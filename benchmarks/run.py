"""``make bench``: every benchmark of the package, printed as tables and written to ``outputs/bench/bench.json``.

Figures, not pass/fail tests; each one is a median over repeated runs. Sections:
head overhead (encode time, SMEC SentenceTransformer vs its base encoder), training throughput and peak
memory per stage (SciFact cache, synthetic memory-mapped cache), S-XBM step time against memory size,
exact top-10 search time / index bytes per dimension and quantization, with the SciFact nDCG@10
that each combination keeps, and the same search in FAISS (exact indexes, and an HNSW index's build time,
memory and recall) when faiss-cpu (the "bench" extra) is installed.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from smec_hf.smec.settings import SMECSettings
from smec_hf.data import default_base_model, load_or_encode, load_retrieval_data
from smec_hf.hf.export import export_model
from smec_hf.smec.chain import SMECChain
from smec_hf.smec.compressor import SMECCompressor
from smec_hf.pipelines.train import train_on_cache

from .common import machine, markdown_table, shared_dataset
from .overhead import encode_overhead
from .retrieval import ndcg_table, search_speed
from .sxbm import sxbm_step_times
from .synthetic import write_synthetic_cache
from .training import throughput_config, training_throughput

try:   # faiss-cpu is the optional "bench" extra: without it the FAISS tables are left out
    from .faiss_search import faiss_report, format_faiss
except ImportError:
    faiss_report = format_faiss = None

SXBM_SIZES = (0, 1000, 5000, 15000)
HEAD_EPOCHS = 15   # when no `make demo` head is there to reuse: keeps `make bench` within its time


def scifact_head(out: Path, cache, scifact, base: str, reuse: Path) -> tuple[Path, dict]:
    """A trained SciFact run: ``reuse`` (the demo's) if it was trained on this very cache, else a shorter one here.

    A rerun into ``out / "run"`` resumes the finished run instead of training again.
    """
    if (reuse / "smec_run.json").is_file():
        run = json.loads((reuse / "smec_run.json").read_text())
        if run.get("embedding_cache", {}).get("key") == cache.meta.get("key"):
            return reuse, run
    config = SMECSettings(max_epochs=HEAD_EPOCHS)
    return out / "run", train_on_cache(cache, scifact, out / "run", config, base, show_progress_bar=False)


def run(out: Path, synthetic_docs: int, synthetic_dim: int, repeats: int, reuse_head: Path, hnsw_docs: int) -> dict:
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {"machine": machine(), "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    "repeats": repeats, "timings_s": {}}
    step = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal step
        report["timings_s"][name] = round(time.perf_counter() - step, 1)
        step = time.perf_counter()
        print(f"[bench] {name}: {report['timings_s'][name]} s", flush=True)

    base = default_base_model()
    scifact = load_retrieval_data(shared_dataset("scifact"))
    cache = load_or_encode(scifact, base, "~/.cache/smec_hf/embeddings", show_progress_bar=False)
    lap("scifact cache")
    run_dir, smec_run = scifact_head(out, cache, scifact, base, reuse_head)
    dims = smec_run["dims"]
    report["head"] = {"run": str(run_dir), "max_epochs": smec_run["config"]["max_epochs"], "dims": dims,
                      "ndcg@10": smec_run["results"]["ndcg@10"]["smec"]}
    lap("scifact head")

    export_model(run_dir, out / "model", overwrite=True)
    claims = [scifact.query_texts[i] for i, q in enumerate(scifact.query_ids) if q in scifact.qrels["test"]]
    report["overhead"] = encode_overhead(base, str(out / "model"), claims, repeats=max(repeats, 5))
    lap("head overhead")

    report["training"] = {"scifact": training_throughput(cache, scifact.qrels["train"], out / "throughput",
                                                         throughput_config(), repeats)}
    lap("training throughput scifact")
    report["sxbm"] = sxbm_step_times(cache, scifact.qrels["train"], out / "sxbm", SXBM_SIZES, steps=20,
                                     config=SMECSettings())
    lap("s-xbm")

    chain = SMECChain.load(run_dir / "head")
    quality = ndcg_table(SMECCompressor.from_chain(chain).transform, cache, scifact.qrels["test"], dims)
    lap("quantized ndcg")

    with tempfile.TemporaryDirectory(dir=out, prefix="synthetic-") as tmp:   # 4 GB at 1M x 1024: deleted after
        synthetic, qrels = write_synthetic_cache(Path(tmp) / "cache", synthetic_docs, synthetic_dim, n_queries=512)
        lap("synthetic cache")
        # one epoch per stage: a step costs the same at any corpus size (it reads only its batch's rows), while
        # the 1M-row corpus shows in the set-up (mining over all of it) and in the memory figures
        report["training"]["synthetic"] = training_throughput(synthetic, qrels, Path(tmp) / "runs",
                                                              throughput_config(max_epochs=1), repeats)
        lap("training throughput synthetic")
        speed = search_speed(synthetic.corpus, dims, n_queries=64, repeats=repeats)
        lap("search speed")
        if faiss_report is None:
            print("[bench] faiss not installed (pip install -e '.[bench]'): FAISS tables left out", flush=True)
        else:
            report["faiss"] = faiss_report(synthetic.corpus, dims, n_queries=64, repeats=repeats,
                                           hnsw_docs=hnsw_docs, threads=torch.get_num_threads())
            lap("faiss search")
    full = next(r for r in speed if r["dim"] == dims[0] and r["precision"] == "float32")
    by_key = {(r["dim"], r["precision"]): r for r in quality}
    for row in speed:
        row["speedup"] = full["seconds"] / row["seconds"]
        row["target_speedup"] = 0.8 * dims[0] / row["dim"] if row["precision"] == "float32" else None
        row["bytes_ratio"] = row["index_bytes"] / full["index_bytes"]
        row["scifact_ndcg@10"] = by_key[(row["dim"], row["precision"])]["ndcg@10"]
    report["retrieval"] = {"docs": synthetic_docs, "queries": 64, "k": 10, "rows": speed,
                           "scifact_frozen_ndcg@10": smec_run["results"]["ndcg@10"]["frozen"][str(dims[0])]}
    report["timings_s"]["total"] = round(time.perf_counter() - started, 1)
    return report


def _target(row: dict) -> str:
    if row["target_speedup"] is None:
        return ""
    return f">= {row['target_speedup']:.1f}x ({'met' if row['speedup'] >= row['target_speedup'] else 'not met'})"


def format_report(report: dict) -> str:
    m = report["machine"]
    lines = [f"Machine: {m['cpu']}, {m['cores']} cores ({m['torch_threads']} torch threads), {m['ram_gib']} GiB RAM, "
             f"GPU: {m['gpu'] or 'none'}; torch {m['torch']}; load average at start {m['load_average_at_start']}; "
             f"{report['date']}. Each figure is the median of {report['repeats']} runs (overhead: "
             f"{max(report['repeats'], 5)}); total {report['timings_s']['total']} s. SciFact head: "
             f"{report['head']['run']} (at most {report['head']['max_epochs']} epochs per stage).", ""]
    o = report["overhead"]
    lines += ["Head overhead (encode, SciFact test claims, batch 32; target <= 2%):", markdown_table(
        ["texts", "base encoder s", "SMEC model s", "overhead", "SMEC modules"],
        [[o["texts"], f"{o['base_s']:.3f}", f"{o['smec_s']:.3f}", f"{100 * o['overhead']:+.1f}%",
          " > ".join(o["modules"])]]), ""]
    rows = []
    for name, t in report["training"].items():
        for s, stage in enumerate(t["stages"]):
            rows.append([name, f"{t['docs']:,} x {t['dim']}", f"{stage['levels'][0]}->{stage['levels'][1]}",
                         f"{stage['pairs_per_s']:,.0f}", t["epochs"],
                         *([f"{t['peak_anon_mib']:,.0f}", f"{t['peak_rss_mib']:,.0f}", f"{t['corpus_file_mib']:,.0f}",
                            f"{t['setup_s']:.1f}"] if s == 0 else ["", "", "", ""])])
    lines += ["Training throughput per stage (query-document pairs/s; batch 128, default settings, "
              "held-out evaluation off) and peak memory above the process's start (MiB; anon = allocated, RSS also "
              "counts mapped file pages):", markdown_table(
                  ["cache", "docs x dim", "stage", "pairs/s", "epochs", "peak anon", "peak RSS", "corpus file",
                   "set-up s"],
                  rows), ""]
    x = report["sxbm"]
    off = x["rows"][0]["seconds_per_step"]
    lines += [f"S-XBM cost (one training step, stage {x['levels'][0]}->{x['levels'][1]}, batch {x['batch_size']}, "
              f"top-{x['top_k']}, memory full):", markdown_table(
                  ["memory size", "ms / step", "x S-XBM off"],
                  [[row["memory_size"] or "off", f"{1000 * row['seconds_per_step']:.1f}",
                    f"{row['seconds_per_step'] / off:.2f}"] for row in x["rows"]]), ""]
    r = report["retrieval"]
    lines += [f"Exact top-{r['k']} search, {r['queries']} queries over {r['docs']:,} synthetic vectors (prefixes), and "
              f"the nDCG@10 SMEC keeps on SciFact test (frozen {r['scifact_frozen_ndcg@10']:.4f} at full dim):",
              markdown_table(
                  ["dim", "precision", "search ms", "speed-up", "target", "index MiB", "bytes", "SciFact nDCG@10"],
                  [[row["dim"], row["precision"], f"{1000 * row['seconds']:.0f}", f"{row['speedup']:.1f}x",
                    _target(row), f"{row['index_bytes'] / 2**20:,.1f}",
                    f"{100 * row['bytes_ratio']:.1f}%", f"{row['scifact_ndcg@10']:.4f}"] for row in r["rows"]])]
    if "faiss" in report:
        lines += ["", *format_faiss(report["faiss"])]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/bench"))
    parser.add_argument("--synthetic-docs", type=int, default=1_000_000)
    parser.add_argument("--synthetic-dim", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--reuse-head", type=Path, default=Path("outputs/demo/run"),
                        help="a SciFact run to measure (used if it was trained on the default cache)")
    parser.add_argument("--hnsw-docs", type=int, default=100_000,
                        help="vectors in the FAISS HNSW index (its build is the slow part: 100k take ~1.5 min "
                        "over the five dims on 2 cores, 1M over 15 min)")
    args = parser.parse_args(argv)
    report = run(args.out, args.synthetic_docs, args.synthetic_dim, args.repeats, args.reuse_head, args.hnsw_docs)
    (args.out / "bench.json").write_text(json.dumps(report, indent=2))
    text = format_report(report)
    (args.out / "bench.md").write_text(text + "\n")
    print(text)
    return 0
