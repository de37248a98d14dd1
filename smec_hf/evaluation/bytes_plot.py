"""``ndcg_vs_bytes.png``: nDCG@10 against bytes per vector, the comparison that dimension alone hides.

One colour per method, one marker per precision, dashed where the first stage's candidates are rescored with
int8 vectors, and the Pareto front (the best score any cell reaches within each byte count) as a thick grey
step line underneath. Bytes are the first-stage index's by default (what sits in RAM; see
``evaluation.precision``).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

from .. import registry
from .precision import PRECISIONS, cells, pareto_front

PLOT_FILE = "ndcg_vs_bytes.png"
MARKERS = {"float32": "o", "int8": "s", "binary": "^"}


def plot_bytes(section: Mapping, path: str | Path, title: str = "", bytes_key: str = "index_bytes") -> Path:
    """Draw a ``report["precision_grid"]`` section to the PNG ``path`` (written atomically)."""
    try:
        import matplotlib
    except ImportError as error:
        raise ImportError("plot_bytes needs matplotlib: pip install matplotlib") from error
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    points = cells(section)
    if not points:
        raise ValueError("the precision grid has no cells to plot")
    methods = registry.ordered(list(section["methods"]))
    colours = {m: f"C{i % 10}" for i, m in enumerate(methods)}
    fig, ax = plt.subplots(figsize=(9.5, 5.2))
    front = pareto_front(points, bytes_key)
    xs = [c.nbytes(bytes_key) for c in front]
    ax.step(xs + [max(c.nbytes(bytes_key) for c in points)], [c.ndcg for c in front] + [front[-1].ndcg],
            where="post", color="grey", alpha=0.45, linewidth=6, zorder=1, solid_capstyle="round")
    for method in methods:
        entry = registry.BY_NAME.get(method)
        width = 2.4 if entry is not None and entry.emphasis else 1.3
        for precision in PRECISIONS:
            for rescored in (False, True):
                line = sorted((c for c in points if (c.method, c.precision, c.rescored) == (method, precision,
                                                                                           rescored)),
                              key=lambda c: c.nbytes(bytes_key))
                if line:
                    ax.plot([c.nbytes(bytes_key) for c in line], [c.ndcg for c in line], color=colours[method],
                            marker=MARKERS[precision], markersize=4.5, linewidth=width,
                            linestyle="--" if rescored else "-", zorder=3 if width > 2 else 2)
    handles = [Line2D([], [], color=colours[m], linewidth=2, label=m) for m in methods]
    handles += [Line2D([], [], color="black", marker=MARKERS[p], linestyle="none", label=p) for p in PRECISIONS]
    handles += [Line2D([], [], color="black", linestyle="--", label="+ int8 rescoring "
                       f"(top {section.get('rescore_multiplier', '?')}x{section.get('top_k', 10)})"),
                Line2D([], [], color="grey", alpha=0.45, linewidth=6, label="Pareto front")]
    ax.set_xscale("log", base=2)
    ticks = sorted({c.nbytes(bytes_key) for c in points})
    ax.set_xticks(ticks, [str(t) for t in ticks], fontsize=7, rotation=45)
    ax.minorticks_off()
    ax.set_xlabel("bytes per vector" + (" (first-stage index)" if bytes_key == "index_bytes"
                                        else " (index + rescoring store)"))
    ax.set_ylabel("nDCG@10")
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        fig.savefig(tmp, dpi=120, format="png")
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return path
