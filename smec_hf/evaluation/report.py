"""The evaluation report: ``report.json`` (the schema below), ``report.md`` (a table) and ``ndcg_vs_dim.png``.

``report.json``::

    {"dataset": str, "base_model": str, "dims": [int, ...],
     "ndcg@10": {method: {dim: score}},          # dims as strings (JSON keys); every method at every dim
     "timings_s": {step: seconds},
     "frozen_full_dim": float | None,             # the frozen encoder at full size (the plot's dashed line)
     "neighbour_recall@10": {method: {dim: r}},   # optional, label-free: recall of the frozen full-dim
                                                  # neighbours of held-out corpus documents (core.retrieval)
     "precision_grid": {...},                     # optional: every method at every precision x dim, plain
                                                  # and rescored, with bytes per vector (evaluation.precision)
     "paired_intervals": {method: {dim: {"diff", "low", "high", "significant"}}},
                                                  # optional: smec minus each method, 95% paired bootstrap
                                                  # over the queries (evaluation.intervals)
     "head_choice": {method: {...}},              # optional: what each SMEC run's do-no-harm check scored on
                                                  # the held-out train queries and shipped (smec.no_harm)
     "held_out_views": {method: {view: {...}}},   # optional: each SMEC run and PCA on the held-out queries
                                                  # about seen / unseen documents (evaluation.held_out_views)
     "tuned_encoders": {method: {...}},           # optional: each method that fine-tuned the encoder itself:
                                                  # trainable_parameters, parameters, lora, epochs_trained,
                                                  # best_epoch, held_out_ndcg@10, train_s, encode_s, history
     "split": str,                                # "test"; "held_out" (no test split: the held-out train
                                                  # queries); "none" (corpus only: ndcg@10 is empty)
     "notes": [str, ...]}
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

from .. import registry
from ..core.io import atomic_write_json
from .bytes_plot import PLOT_FILE as BYTES_PLOT_FILE, plot_bytes
from .held_out_views import views_markdown
from .intervals import comparison_markdown
from .precision import best_per_budget, budget_markdown, cells

REPORT_FILE, MARKDOWN_FILE, PLOT_FILE = "report.json", "report.md", "ndcg_vs_dim.png"
RECALL = "neighbour_recall@10"
GRID, INTERVALS, HEAD_CHOICE = "precision_grid", "paired_intervals", "head_choice"
HELD_OUT_VIEWS = "held_out_views"
TUNED_ENCODERS = "tuned_encoders"
REQUIRED_KEYS = {"dataset": str, "base_model": str, "dims": list, "ndcg@10": dict, "timings_s": dict}


def build_report(dataset: str, base_model: str, dims: Sequence[int], scores: Mapping[str, Mapping[int, float]],
                 timings: Mapping[str, float], *, frozen_full_dim: float | None = None, split: str = "test",
                 notes: Sequence[str] = (), neighbour_recall: Mapping[str, Mapping[int, float]] | None = None,
                 extra: Mapping | None = None) -> dict:
    """Assemble (and validate) the report from ``scores[method][dim]`` (and ``neighbour_recall[method][dim]``);
    ``extra``: the optional ``precision_grid`` / ``paired_intervals`` / ``head_choice`` / ``held_out_views`` /
    ``tuned_encoders`` sections."""
    report = {
        "dataset": str(dataset), "base_model": str(base_model), "dims": [int(d) for d in dims],
        "ndcg@10": {m: {str(int(d)): float(scores[m][d]) for d in dims} for m in registry.ordered(list(scores))},
        "timings_s": {k: round(float(v), 2) for k, v in timings.items()},
        "frozen_full_dim": None if frozen_full_dim is None else float(frozen_full_dim),
        "split": split, "notes": list(notes),
    }
    if neighbour_recall:
        report[RECALL] = {m: {str(int(d)): float(neighbour_recall[m][d]) for d in dims}
                          for m in registry.ordered(list(neighbour_recall))}
    report.update({k: v for k, v in (extra or {}).items() if k in (GRID, INTERVALS, HEAD_CHOICE, HELD_OUT_VIEWS,
                                                                    TUNED_ENCODERS)})
    validate_report(report)
    return report


def validate_report(report: Mapping) -> None:
    """Raise ``ValueError`` naming the first key that breaks the schema."""
    for key, kind in REQUIRED_KEYS.items():
        if not isinstance(report.get(key), kind):
            raise ValueError(f"report[{key!r}] must be a {kind.__name__}, got {type(report.get(key)).__name__}")
    dims = report["dims"]
    if not dims or any(not isinstance(d, int) or d < 1 for d in dims):
        raise ValueError(f"report['dims'] must be positive integers, got {dims}")
    if not report["ndcg@10"] and not (report.get("split") == "none" and report.get(RECALL)):
        raise ValueError("report['ndcg@10'] has no methods (only a corpus-only report, split 'none', may have none)")
    for key in ("ndcg@10", RECALL):
        for method, by_dim in report.get(key, {}).items():
            if set(by_dim) != {str(d) for d in dims}:
                raise ValueError(f"report[{key!r}][{method!r}] has dims {sorted(by_dim)}, expected {dims}")
            bad = [d for d, v in by_dim.items() if not (isinstance(v, float) and 0.0 <= v <= 1.0)]
            if bad:
                raise ValueError(f"report[{key!r}][{method!r}] has scores outside [0, 1] at dims {bad}")
    if GRID in report and not isinstance(report[GRID].get("methods"), dict):
        raise ValueError("report['precision_grid'] must hold a 'methods' mapping")
    for method, by_dim in report.get(INTERVALS, {}).items():
        for dim, cell in by_dim.items():
            if not {"diff", "low", "high", "significant"} <= set(cell) or not cell["low"] <= cell["diff"] <= cell["high"]:
                raise ValueError(f"report['paired_intervals'][{method!r}][{dim!r}] must hold diff within [low, high]")
    for step, seconds in report["timings_s"].items():
        if not isinstance(seconds, (int, float)) or not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"report['timings_s'][{step!r}] must be a non-negative number, got {seconds!r}")


def markdown_table(report: Mapping, key: str = "ndcg@10") -> str:
    """Methods as rows, dims as columns, the best score of each column in bold (ties all bold)."""
    dims = [str(d) for d in report["dims"]]
    scores = report[key]
    best = {d: max(round(scores[m][d], 4) for m in scores) for d in dims}
    lines = ["| method | " + " | ".join(dims) + " |", "|---|" + "---:|" * len(dims)]
    for method in scores:
        cells = [f"{scores[method][d]:.4f}" for d in dims]
        cells = [f"**{cell}**" if round(scores[method][d], 4) == best[d] else cell for cell, d in zip(cells, dims)]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main_measure(report: Mapping) -> str:
    """The report's headline measure: nDCG@10, or for a corpus-only run (no queries) neighbour recall@10."""
    return "ndcg@10" if report["ndcg@10"] else RECALL


def to_markdown(report: Mapping) -> str:
    frozen = report.get("frozen_full_dim")
    parts = [f"# nDCG@10 by embedding dimension: {report['dataset']} ({report.get('split', 'test')} split)", "",
             f"Base encoder: `{report['base_model']}`."
             + (f" Frozen at full size ({report['dims'][0]}-d): {frozen:.4f}." if frozen is not None else ""),
             "", markdown_table(report) if report["ndcg@10"] else "No queries: nothing to score nDCG@10 on.", ""]
    if RECALL in report:
        parts += ["## Neighbour recall@10 (no labels needed)", "",
                  "How many of each held-out corpus document's 10 nearest neighbours at full size (frozen encoder) "
                  "the method still finds at each size; probes are corpus documents that are no train positive.", "",
                  markdown_table(report, RECALL), ""]
    parts += comparison_markdown_sections(report)
    parts += tuned_encoders_markdown(report)
    parts += ["## Timings (s)", "", "| step | seconds |", "|---|---:|"]
    parts += [f"| {step} | {seconds:.1f} |" for step, seconds in report["timings_s"].items()]
    if report.get("notes"):
        parts += ["", "## Notes", ""] + [f"- {note}" for note in report["notes"]]
    return "\n".join(parts) + "\n"


def tuned_encoders_markdown(report: Mapping) -> list[str]:
    """report.md's table of the methods that fine-tuned the encoder itself: what they trained and what it cost."""
    tuned = report.get(TUNED_ENCODERS, {})
    if not tuned:
        return []
    parts = ["## Fine-tuned encoders", "",
             "Methods that train the encoder itself (its corpus re-encoded by the tuned encoder), early-stopped on "
             "the held-out train queries (mean nDCG@10 over the dims, each query against its judged documents and "
             "mined negatives).", "",
             "| method | trainable parameters | of all | LoRA | epochs (best) | held-out nDCG@10 | train s "
             "| encode s |",
             "|---|---:|---:|---|---:|---:|---:|---:|"]
    for method, r in tuned.items():
        parts.append(f"| {method} | {r['trainable_parameters']:,} | {r['trainable_parameters'] / r['parameters']:.2%} "
                     f"| {'yes' if r['lora'] else 'no (full)'} | {r['epochs_trained']} ({r['best_epoch']}) "
                     f"| {r['held_out_ndcg@10']:.4f} | {r['train_s']:.1f} | {r['encode_s']:.1f} |")
    return parts + [""]


def comparison_markdown_sections(report: Mapping) -> list[str]:
    """report.md's per-byte sections: the best cell per byte budget and SMEC's paired intervals."""
    parts = []
    if GRID in report:
        grid = report[GRID]
        points = cells(grid)
        parts += ["## Best nDCG@10 for N bytes per vector", "",
                  f"Every method at every size in float32, int8 and binary (Sentence-Transformers' quantization, "
                  f"int8 ranges from the corpus), plain and with the top {grid['rescore_multiplier'] * grid['top_k']} "
                  "rescored against int8 document vectors; exact search on the cached vectors. Index bytes are what "
                  f"the first stage keeps in memory; total bytes add the rescoring store. Plot: `{BYTES_PLOT_FILE}`.",
                  "", budget_markdown(best_per_budget(points)), "",
                  budget_markdown(best_per_budget(points, bytes_key="total_bytes"), "total_bytes"), ""]
    if report.get(INTERVALS):
        parts += ["## SMEC against each method: paired 95% intervals", "", comparison_markdown(report[INTERVALS]), ""]
    for method, choice in report.get(HEAD_CHOICE, {}).items():
        dims = list(choice["levels"])
        parts += [f"## Do no harm: {method} on the {choice['split']}", "",
                  f"The trained head, PCA and truncation on the {choice['split']} (never the test split). The "
                  "floor here is the bias-free PCA rotation of stage 1's input, the PCA an exported head can be; the "
                  "trained head is shipped unless that PCA beats it at some size (by more than the held-out set's "
                  f"noise; with queries grouped by document or topic, at all). Shipped: **{choice['kept']}**.", "",
                  "| head | " + " | ".join(dims) + " |", "|---" * (len(dims) + 1) + "|"]
        parts += [f"| {label} | " + " | ".join(f"{choice['levels'][d][name]:.4f}" for d in dims) + " |"
                  for name, label in (("trained", "trained"), ("pca", "pca rotation (bias-free, the floor)"),
                                      ("truncation", "truncation"), ("shipped", "shipped"))]
        parts.append("")
    for method, views in report.get(HELD_OUT_VIEWS, {}).items():
        parts += [f"## {method} on held-out queries about seen and unseen documents", "",
                  "Held-out train queries whose relevant document some training query also has, and the others; "
                  "`pca` is the results table's (centred) PCA.", "",
                  *views_markdown(views, report["dims"]), ""]
    return parts


def plot(report: Mapping, path: str | Path) -> Path:
    """nDCG@10 against dimension (log2 axis), one line per method, the frozen full-size score dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dims = report["dims"]
    fig, ax = plt.subplots(figsize=(8.5, 4.8))
    measure = main_measure(report)
    for method, by_dim in report[measure].items():
        entry = registry.BY_NAME.get(method)
        emphasis = entry is not None and entry.emphasis
        ax.plot(dims, [by_dim[str(d)] for d in dims], marker="o", label=method,
                linestyle=entry.line_style if entry is not None else "-", linewidth=2.6 if emphasis else 1.4,
                zorder=3 if emphasis else 2)
    if report.get("frozen_full_dim") is not None:
        ax.axhline(report["frozen_full_dim"], color="black", linestyle="--", linewidth=0.9,
                   label=f"frozen {dims[0]}-d")
    ax.set_xscale("log", base=2)
    ax.set_xticks(dims, [str(d) for d in dims])
    ax.minorticks_off()
    ax.set_xlabel("embedding dimension")
    ax.set_ylabel({"ndcg@10": "nDCG@10", RECALL: "neighbour recall@10 (no labels)"}[measure])
    ax.set_title(f"{report['dataset']} ({report.get('split', 'test')} split), base encoder {report['base_model']}",
                 fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(report: Mapping, output_dir: str | Path) -> dict[str, Path]:
    """Write report.json (atomically), report.md and ndcg_vs_dim.png into ``output_dir``."""
    validate_report(report)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(output_dir / REPORT_FILE, report)
    (output_dir / MARKDOWN_FILE).write_text(to_markdown(report))
    paths = {"json": output_dir / REPORT_FILE, "markdown": output_dir / MARKDOWN_FILE,
             "plot": plot(report, output_dir / PLOT_FILE)}
    if GRID in report:
        paths["bytes_plot"] = plot_bytes(report[GRID], output_dir / BYTES_PLOT_FILE,
                                         title=f"{report['dataset']} ({report.get('split', 'test')} split)")
    return paths


def summary(report: Mapping, paths: Mapping[str, Path] | None = None) -> str:
    """The one-screen end-of-run summary: the table, the total time and where everything is."""
    lines = [f"nDCG@10 on {report['dataset']} ({report.get('split', 'test')}), base {report['base_model']}:",
             markdown_table(report) if report["ndcg@10"] else "(no queries)"]
    if RECALL in report:
        lines += ["neighbour recall@10 of held-out corpus documents (label-free):", markdown_table(report, RECALL)]
    if report.get("frozen_full_dim") is not None:
        lines.append(f"frozen {report['dims'][0]}-d: {report['frozen_full_dim']:.4f}")
    if GRID in report:
        lines += ["best nDCG@10 per bytes per vector (index):", budget_markdown(best_per_budget(cells(report[GRID])))]
    if "total" in report["timings_s"]:
        lines.append(f"total time: {report['timings_s']['total']:.0f} s")
    for label, path in (paths or {}).items():
        lines.append(f"{label}: {path}")
    return "\n".join(lines)
