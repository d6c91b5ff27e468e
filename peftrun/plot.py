"""The trade-off plot of a sweep: task metric vs % of backbone parameters trained (log x).

Reads as He et al. (2022) Figure 1: one point per method (mean over seeds, error bar = sample std), one marker
style and colour per method, each point labelled. One panel per (task, backbone); each panel is PANEL_INCHES
at DPI, panels laid out COLUMNS to a row, so a report of n panels is a known pixel size (`figure_pixels`).
matplotlib is the optional `plot` extra; without it the PNG is skipped with a one-line note.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from peftrun.io import atomic_write

PANEL_INCHES = (6.4, 4.8)
DPI = 100
COLUMNS = 2
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p")


def figure_pixels(n_panels: int) -> tuple[int, int]:
    """(width, height) in pixels of a figure with `n_panels` panels."""
    cols = min(n_panels, COLUMNS)
    rows = -(-n_panels // COLUMNS)
    return round(PANEL_INCHES[0] * cols * DPI), round(PANEL_INCHES[1] * rows * DPI)


Point = tuple[Any, float, float, float | None]  # (report row, trainable %, metric mean, metric std or None)


def panels(rows: Sequence[Any], metric: str | None) -> list[tuple[str, str, list[Point]]]:
    """(title, y label, points) per (task, backbone) with something to plot.

    `rows` are peftrun.report.Row. `metric` None: each panel's first metric (that of its first row). Rows
    without the metric, or with no trainable parameters (log x), are left out.
    """
    grouped: dict[tuple[str, str], list[Any]] = {}
    for row in rows:
        grouped.setdefault((row.task, row.backbone), []).append(row)
    found = []
    for (task, backbone), members in grouped.items():
        name = metric or next((m for r in members for m in r.metrics), None)
        points = []
        for row in members:
            values, pcts = row.metrics.get(name, []), row.params.get("trainable_pct", [])
            if values and pcts and statistics.mean(pcts) > 0:
                std = statistics.stdev(values) if len(values) > 1 else None
                points.append((row, statistics.mean(pcts), statistics.mean(values), std))
        if points:
            found.append((f"{task} · {backbone}", f"{name} ({points[0][0].split})", points))
    return found


def plot_tradeoff(rows: Sequence[Any], path: str | Path, metric: str | None = None) -> tuple[Path | None, str]:
    """Write the plot to `path` (atomically); returns (path or None, a one-line note for the report)."""
    try:
        import matplotlib
    except ImportError:
        return None, "report.png skipped: matplotlib is not installed (pip install 'peftrun[plot]')"
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    found = panels(rows, metric)
    if not found:
        return None, "report.png skipped: no evaluated run with trainable parameters to plot"
    methods = list(dict.fromkeys(point[0].method for _, _, points in found for point in points))
    style = {m: (MARKERS[i % len(MARKERS)], f"C{i % 10}") for i, m in enumerate(methods)}
    width, height = figure_pixels(len(found))
    fig, axes = plt.subplots(-(-len(found) // COLUMNS), min(len(found), COLUMNS), squeeze=False,
                             figsize=(width / DPI, height / DPI), dpi=DPI, layout="constrained")
    for ax, (title, ylabel, points) in zip(axes.flat, found, strict=False):
        _draw_panel(ax, title, ylabel, points, style)
    for ax in list(axes.flat)[len(found):]:
        ax.set_visible(False)
    path = Path(path)
    try:  # no bbox_inches="tight": the pixel size stays figure_pixels
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=DPI, format="png"))
    finally:
        plt.close(fig)
    return path, f"report.png: {len(found)} panel(s), metric vs trainable parameters (% of backbone, log scale)"


def _draw_panel(ax: Any, title: str, ylabel: str, points: list[Point], style: dict) -> None:
    from matplotlib.ticker import FuncFormatter

    seen: set[str] = set()
    for row, pct, mean, std in points:
        marker, color = style[row.method]
        ax.errorbar([pct], [mean], yerr=None if std is None else [std], marker=marker, color=color, markersize=8,
                    capsize=3, linestyle="none", label=None if row.method in seen else row.method)
        seen.add(row.method)
        label = row.method + (f" ({row.short_variant()})" if row.variant_items else "")
        ax.annotate(label, (pct, mean), textcoords="offset points", xytext=(6, 6), fontsize=8)
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))  # 0.1, 1, 10 as the papers print
    ax.margins(x=0.12, y=0.1)
    ax.set_xlabel("trainable parameters (% of backbone)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8, loc="best")

