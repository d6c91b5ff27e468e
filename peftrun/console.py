"""Rich tables for the console: parameter accounting before training, metrics after."""

from __future__ import annotations

from typing import Any

from rich.console import Console, Group
from rich.table import Table

LOG_WIDTH = 160  # columns when stdout is a file (Slurm logs, CI): rich's default 80 truncates wide tables


def make_console(**kwargs: Any) -> Console:
    """A rich Console: the terminal's width on a terminal, LOG_WIDTH columns in a log file."""
    import os
    import sys

    width = None if sys.stdout.isatty() or "COLUMNS" in os.environ else LOG_WIDTH
    return Console(width=width, **kwargs)


def parameter_table(params: dict[str, Any], title: str) -> Table:
    table = Table(title=f"parameters: {title}", title_justify="left")
    table.add_column("what")
    table.add_column("count", justify="right")
    table.add_column("% of backbone", justify="right")
    backbone = params.get("backbone") or 1
    for key in ("backbone", "total", "trainable", "saved"):
        if key in params:
            table.add_row(key, f"{params[key]:,}", f"{100 * params[key] / backbone:.4f}")
    for name, info in (params.get("per_delta") or {}).items():
        table.add_row(f"  delta {name}", f"{info.get('trainable', 0):,}", f"{100 * info.get('trainable', 0) / backbone:.4f}")
    return table


def results_table(record: dict[str, Any]) -> Group:
    """The metrics per split, then one line of parameter counts and timings."""
    params = record.get("params") or {}
    timings = record.get("timings") or {}
    summary = (
        f"{record.get('run_name')}: trainable {params.get('trainable', 0):,} ({params.get('trainable_pct', 0):.4f}% of backbone), "
        f"saved {params.get('saved', 0):,}; train {timings.get('train_s', 0)} s, eval {timings.get('eval_s', 0)} s"
    )
    hint = real_checkpoint_hint(record)
    return Group(_metrics_table(record), summary, *([hint] if hint else []))


def real_checkpoint_hint(record: dict[str, Any]) -> str | None:
    """For a run on a tiny offline backbone: the one command that runs the same method on a real checkpoint
    (a decoder LM for text tasks, a BERT encoder for head formulations; README "Real pretrained checkpoints")."""
    config = record.get("config") or {}
    backbone, method, task = config.get("backbone") or {}, config.get("method") or {}, config.get("task") or {}
    if backbone.get("source") != "tiny" or not method.get("name") or not task.get("name"):
        return None
    encoder = backbone.get("family") == "bert" or task.get("formulation") == "head"
    real = "minilm-l6" if encoder else "smollm2-135m-instruct"
    data = f" task.data_dir={task['data_dir']}" if task.get("data_dir") and task["data_dir"] != "builtin" else ""
    return (f"the same on a real checkpoint: peftrun backbone={real} method={method['name']} task={task['name']}"
            f"{data}  (weights: README, 'Real pretrained checkpoints')")


def _metrics_table(record: dict[str, Any]) -> Table:
    table = Table(title="results", title_justify="left")
    table.add_column("split")
    metrics = record.get("metrics") or {}
    names = sorted({name for values in metrics.values() for name in values})
    for name in names:
        table.add_column(name, justify="right")
    for split, values in metrics.items():
        table.add_row(split, *(_fmt(values.get(name)) for name in names))
    return table


def _fmt(value: Any) -> str:
    return "" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)
