"""`peftrun-report`: one comparison table from a sweep's run records (console, CSV, Markdown, plot).

    peftrun-report multirun/2026-01-01_12-00-00 [--out OUTDIR] [--metric NAME]

Finds every `results.json` under DIR (a Hydra multirun folder or any tree of runs) and groups the runs whose
resolved configs differ only in `trainer.seed`: one row per group, each metric as mean ± sample std
(statistics.stdev, n - 1) over the seeds. Rows are method x backbone x task; when several groups share those
three names (a `method.rank=4,8` sweep), the `variant` column names the config keys that tell them apart.
Metrics are those of the main eval split (`task.eval_splits[0]`, else the record's first split). Dry runs
show the parameter accounting only; failed, interrupted and unreadable runs are listed apart with their error.

Writes OUTDIR/report.csv (full precision, one `<metric>` and `<metric>_std` column pair per metric),
OUTDIR/report.md and OUTDIR/report.png (metric vs trainable-parameter %, see peftrun/plot.py), each atomically.
Import-light on purpose: no torch, no Hydra; matplotlib only when plotting.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import re
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peftrun.errors import PeftrunError
from peftrun.io import atomic_write_text
from peftrun.records import RECORD_NAME

BYTES_PER_PARAM = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}
RESULT_STATUSES = ("complete", "dry_run")  # rows of the table; every other status is listed as a failure
SEED_KEY = "trainer.seed"


@dataclass
class Row:
    """One group of runs that differ only in `trainer.seed` (values are per run, in `seeds` order)."""

    task: str
    backbone: str
    method: str
    status: str
    split: str | None
    config: dict[str, Any]
    seeds: list[Any] = field(default_factory=list)
    run_dirs: list[str] = field(default_factory=list)
    metrics: dict[str, list[float]] = field(default_factory=dict)
    train_s: list[float] = field(default_factory=list)
    wall_s: list[float] = field(default_factory=list)  # timings.total_s: the job's start to its final record
    params: dict[str, list[float]] = field(default_factory=dict)
    dtype: str | None = None
    variant_items: list[tuple[str, Any]] = field(default_factory=list)  # config keys telling it from its siblings

    @property
    def variant(self) -> str:
        """'method.rank=8, trainer.lr=0.0002': exact values (CSV)."""
        return ", ".join(f"{k}={_compact(v)}" for k, v in self.variant_items)

    def short_variant(self) -> str:
        """'rank=8, lr=0.0002': last key component, floats to 4 significant digits (tables, plot)."""
        return ", ".join(f"{k.rsplit('.', 1)[-1]}={f'{v:.4g}' if isinstance(v, float) else _compact(v)}"
                         for k, v in self.variant_items)


@dataclass
class Failure:
    """A run without results: status failed / running (interrupted) / unreadable record."""

    run_dir: str
    status: str
    error: str
    task: str = "?"
    backbone: str = "?"
    method: str = "?"
    seed: Any = None


@dataclass
class Report:
    rows: list[Row]
    failures: list[Failure]
    metric_names: list[str]  # union over rows, in order of first appearance


# ---------------------------------------------------------------- collect


def find_records(root: str | Path) -> list[tuple[Path, dict[str, Any] | None, str | None]]:
    """(path, record, read error) for every results.json under `root`, in natural path order (job 2 before 10)."""
    root = Path(root)
    if not root.exists():
        raise PeftrunError(f"{root} does not exist; give peftrun-report a run or multirun directory")
    paths = [root] if root.is_file() else list(root.rglob(RECORD_NAME))
    found = []
    for path in sorted(paths, key=_natural_key):
        try:
            record = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            found.append((path, None, f"unreadable {RECORD_NAME}: {type(err).__name__}: {err}"))
            continue
        problem = record_problem(record)
        if problem is not None:
            found.append((path, None, f"malformed {RECORD_NAME}: {problem}"))
            continue
        found.append((path, record, None))
    return found


MAPPINGS = ("metrics", "params", "timings")  # record fields the report reads, each a mapping when present
CONFIG_GROUPS = ("task", "backbone", "method", "trainer")


def record_problem(record: Any) -> str | None:
    """Why `record` cannot be a row of the report (wrong shapes of the fields it reads), or None."""
    if not isinstance(record, dict) or not isinstance(record.get("config"), dict):
        return "no 'config' mapping (not a peftrun run record)"
    for group in CONFIG_GROUPS:
        if record["config"].get(group) is not None and not isinstance(record["config"][group], dict):
            return f"config.{group} is not a mapping"
    for name in MAPPINGS:
        if record.get(name) is not None and not isinstance(record[name], dict):
            return f"{name!r} is not a mapping"
    if any(not isinstance(v, dict) for v in (record.get("metrics") or {}).values()):
        return "'metrics' is not a mapping of split -> {metric: value}"
    eval_splits = _get(record["config"], "task", "eval_splits")
    if eval_splits is not None and not isinstance(eval_splits, list):
        return "config.task.eval_splits is not a list"
    return None


def build_report(found: Sequence[tuple[Path, dict[str, Any] | None, str | None]]) -> Report:
    """Group the records into rows (config minus seed) and failures."""
    groups: dict[str, Row] = {}
    failures: list[Failure] = []
    for path, record, error in found:
        if record is None:
            failures.append(Failure(str(path.parent), "unreadable", error or ""))
            continue
        try:
            json.dumps(record["config"], sort_keys=True, default=str)
        except (TypeError, ValueError) as err:  # e.g. keys of mixed types cannot be sorted
            failures.append(Failure(str(path.parent), "unreadable", f"malformed {RECORD_NAME}: {err}"))
            continue
        cfg = record["config"]
        names = _names(cfg)
        status = str(record.get("status"))
        if status not in RESULT_STATUSES:
            message = record.get("error") or f"no result (status {status!r}): the run was interrupted or is running"
            failures.append(Failure(_run_dir(record, path), status, str(message), *names, seed=_seed(record)))
            continue
        key = json.dumps([status, _without_seed(cfg)], sort_keys=True, default=str)
        row = groups.get(key)
        if row is None:
            row = groups[key] = Row(*names, status=status, split=_main_split(record), config=cfg,
                                    dtype=_get(cfg, "backbone", "dtype"))
        _add_run(row, record, path)
    rows = sorted(groups.values(), key=lambda r: (r.task, r.backbone))  # stable: launch order inside
    _label_variants(rows)
    metric_names: list[str] = []
    for row in rows:
        metric_names += [name for name in row.metrics if name not in metric_names]
    return Report(rows, failures, metric_names)


def _add_run(row: Row, record: dict[str, Any], path: Path) -> None:
    row.seeds.append(_seed(record))
    row.run_dirs.append(_run_dir(record, path))
    split_metrics = (record.get("metrics") or {}).get(row.split) or {}
    for name, value in split_metrics.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            row.metrics.setdefault(name, []).append(float(value))
    timings = record.get("timings") or {}
    for values, key in ((row.train_s, "train_s"), (row.wall_s, "total_s")):
        if isinstance(timings.get(key), (int, float)):
            values.append(float(timings[key]))
    for name in ("trainable", "saved", "trainable_pct", "backbone"):
        value = (record.get("params") or {}).get(name)
        if isinstance(value, (int, float)):
            row.params.setdefault(name, []).append(value)


def _names(cfg: dict[str, Any]) -> tuple[str, str, str]:
    return (str(_get(cfg, "task", "name") or "?"), str(_get(cfg, "backbone", "name") or "?"),
            str(_get(cfg, "method", "name") or "?"))


def _get(cfg: dict[str, Any], group: str, key: str) -> Any:
    node = cfg.get(group)
    return node.get(key) if isinstance(node, dict) else None


def _seed(record: dict[str, Any]) -> Any:
    seed = _get(record["config"], "trainer", "seed")
    return record.get("seed") if seed is None else seed


def _run_dir(record: dict[str, Any], path: Path) -> str:
    return str(record.get("run_dir") or path.parent)


def _main_split(record: dict[str, Any]) -> str | None:
    """task.eval_splits[0] when the record has it, else the first split with metrics."""
    metrics = record.get("metrics") or {}
    splits = _get(record["config"], "task", "eval_splits") or []
    if splits and (splits[0] in metrics or not metrics):
        return str(splits[0])
    return next(iter(metrics), None)


def _without_seed(cfg: dict[str, Any]) -> dict[str, Any]:
    trainer = cfg.get("trainer")
    if not isinstance(trainer, dict):
        return cfg
    return {**cfg, "trainer": {k: v for k, v in trainer.items() if k != "seed"}}


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys -> leaf values; lists stay leaves (a method's `deltas` list is one value)."""
    if not isinstance(node, dict):
        return {prefix: node}
    flat: dict[str, Any] = {}
    for key, value in node.items():
        flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def _label_variants(rows: list[Row]) -> None:
    """Name what distinguishes rows sharing task/backbone/method/status: the config keys whose values differ.

    Scalar keys are preferred; list-valued keys (e.g. method.deltas, which interpolates the scalar knobs)
    are named only when no scalar key differs.
    """
    buckets: dict[tuple[str, ...], list[Row]] = {}
    for row in rows:
        buckets.setdefault((row.task, row.backbone, row.method, row.status), []).append(row)
    for bucket in buckets.values():
        if len(bucket) < 2:
            continue
        flats = [_flatten(_without_seed(row.config)) for row in bucket]
        keys = list(dict.fromkeys(k for flat in flats for k in flat))
        differing = [k for k in keys if len({json.dumps(f.get(k), sort_keys=True, default=str) for f in flats}) > 1]
        scalars = [k for k in differing if not any(isinstance(f.get(k), (list, dict)) for f in flats)]
        shown = scalars or differing
        for row, flat in zip(bucket, flats, strict=True):
            row.variant_items = [(k, flat.get(k)) for k in shown]


def _compact(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)


def _natural_key(path: Path) -> list[Any]:
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", str(path))]


# ---------------------------------------------------------------- numbers


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (n - 1); std is None for fewer than two values."""
    if not values:
        return None, None
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else None)


def saved_mb(row: Row) -> float | None:
    """Size of the saved parameters at the backbone dtype, in MB (10^6 bytes)."""
    saved = mean_std(row.params.get("saved", []))[0]
    width = BYTES_PER_PARAM.get(row.dtype or "")
    return None if saved is None or width is None else saved * width / 1e6


def csv_columns(metric_names: Sequence[str]) -> list[str]:
    metric_cols = [col for name in metric_names for col in (name, f"{name}_std")]
    return ["task", "backbone", "method", "variant", "status", "runs", "seeds", "split", *metric_cols,
            "trainable_pct", "trainable", "saved", "saved_mb", "dtype", "train_s", "train_s_std", "wall_s", "wall_s_std",
            "error", "run_dirs"]


def csv_rows(report: Report) -> list[dict[str, Any]]:
    """Full-precision rows (floats as repr, so the file round-trips exactly), results first, then failures."""
    out = []
    for row in report.rows:
        entry: dict[str, Any] = {
            "task": row.task, "backbone": row.backbone, "method": row.method, "variant": row.variant,
            "status": row.status, "runs": len(row.run_dirs), "seeds": ";".join(str(s) for s in row.seeds),
            "split": row.split or "", "dtype": row.dtype or "", "error": "", "run_dirs": ";".join(row.run_dirs),
        }
        for name in report.metric_names:
            entry[name], entry[f"{name}_std"] = mean_std(row.metrics.get(name, []))
        for name in ("trainable_pct", "trainable", "saved"):
            entry[name] = mean_std(row.params.get(name, []))[0]
        entry["saved_mb"] = saved_mb(row)
        entry["train_s"], entry["train_s_std"] = mean_std(row.train_s)
        entry["wall_s"], entry["wall_s_std"] = mean_std(row.wall_s)
        out.append({k: ("" if v is None else v) for k, v in entry.items()})
    for fail in report.failures:
        out.append({"task": fail.task, "backbone": fail.backbone, "method": fail.method, "status": fail.status,
                    "runs": 1, "seeds": "" if fail.seed is None else fail.seed, "error": fail.error,
                    "run_dirs": fail.run_dir})
    return out


# ---------------------------------------------------------------- render


def _num(value: float | None, kind: str, like: float | None = None) -> str:
    """Rounded for reading; `like` (a mean) sets the decimals of its std so both line up."""
    if value is None:
        return ""
    if kind == "count":
        return f"{round(value):,}"
    if kind == "pct":
        return f"{value:.3g}"
    if kind == "mb":
        return f"{value:.3f}"
    if kind == "s":
        return f"{value:.1f}"
    return f"{value:.2f}" if abs(value if like is None else like) >= 1 else f"{value:.4f}"


def _pm(values: Sequence[float], kind: str = "metric") -> str:
    mean, std = mean_std(values)
    if mean is None:
        return ""
    return _num(mean, kind) if std is None else f"{_num(mean, kind)} ± {_num(std, kind, like=mean)}"


def display_table(report: Report) -> tuple[list[str], list[list[str]]]:
    """Header and rounded cells shared by the console and Markdown tables."""
    show_variant = any(row.variant for row in report.rows)
    header = ["task", "backbone", "method", *(["variant"] if show_variant else []), "n", "split",
              *report.metric_names, "trainable %", "trainable", "saved", "saved MB", "train s", "wall s", "status"]
    cells = []
    for row in report.rows:
        params = {name: mean_std(values)[0] for name, values in row.params.items()}
        cells.append([
            row.task, row.backbone, row.method, *([row.short_variant()] if show_variant else []), str(len(row.run_dirs)),
            row.split or "", *(_pm(row.metrics.get(name, [])) for name in report.metric_names),
            _num(params.get("trainable_pct"), "pct"), _num(params.get("trainable"), "count"),
            _num(params.get("saved"), "count"), _num(saved_mb(row), "mb"), _pm(row.train_s, "s"),
            _pm(row.wall_s, "s"), row.status,
        ])
    return header, cells


def markdown(report: Report, source: str, plot_note: str) -> str:
    header, cells = display_table(report)
    lines = [f"# peftrun report: {source}", "",
             f"{sum(len(r.run_dirs) for r in report.rows)} runs in {len(report.rows)} rows "
             f"(mean ± sample std over `trainer.seed`), {len(report.failures)} without results.", ""]
    if cells:
        lines += [_md_row(header), _md_row(["---"] * len(header)), *(_md_row(c) for c in cells), ""]
    if report.failures:
        lines += ["## Runs without results", "", _md_row(["run", "status", "error"]), _md_row(["---"] * 3)]
        lines += [_md_row([_failure_name(f), f.status, f.error]) for f in report.failures]
        lines.append("")
    lines += [plot_note, ""]
    return "\n".join(lines)


def _failure_name(fail: Failure) -> str:
    if fail.status == "unreadable":
        return fail.run_dir
    return f"{fail.method} x {fail.backbone} x {fail.task} (seed {fail.seed})\n{fail.run_dir}"


def _md_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|").replace("\n", "<br>") for c in cells) + " |"


def print_tables(report: Report, console: Any) -> None:
    from rich.table import Table

    header, cells = display_table(report)
    if cells:
        table = Table(title="peftrun report", title_justify="left",
                      caption="mean ± sample std over seeds; metrics of the main eval split")
        for name in header:
            table.add_column(name, justify="left" if name in ("task", "backbone", "method", "variant", "split",
                                                             "status") else "right")
        for row in cells:
            table.add_row(*row)
        console.print(table)
    if report.failures:
        table = Table(title="runs without results", title_justify="left")
        for name in ("method", "backbone", "task", "seed", "status", "error", "run dir"):
            table.add_column(name)
        for f in report.failures:
            table.add_row(f.method, f.backbone, f.task, str(f.seed), f.status, f.error, f.run_dir)
        console.print(table)


# ---------------------------------------------------------------- command


def write_report(root: str | Path, out: str | Path | None = None, metric: str | None = None,
                 console: Any = None) -> dict[str, Path | None]:
    """Aggregate the records under `root`, write report.csv/.md/.png into `out` (default: `root`)."""

    found = find_records(root)
    if not found:
        raise PeftrunError(f"no {RECORD_NAME} under {root}; point peftrun-report at a run or multirun directory")
    report = build_report(found)
    if metric is not None and metric not in report.metric_names:
        raise PeftrunError(f"--metric {metric!r} is in no run record under {root}; "
                           f"available: {', '.join(report.metric_names) or 'none (no evaluated runs)'}")
    out_dir = Path(out) if out is not None else (Path(root).parent if Path(root).is_file() else Path(root))
    if out_dir.exists() and not out_dir.is_dir():
        raise PeftrunError(f"--out {out_dir} is a file, not a folder; give a folder for report.csv/.md/.png")
    try:
        return _write_outputs(root, out_dir, report, metric, console)
    except OSError as err:
        raise PeftrunError(f"cannot write the report into {out_dir}: {err.strerror or err}"
                           f"{f' ({err.filename})' if err.filename else ''}") from err


def _write_outputs(root: str | Path, out_dir: Path, report: Report, metric: str | None,
                   console: Any) -> dict[str, Path | None]:
    from peftrun.plot import plot_tradeoff

    out_dir.mkdir(parents=True, exist_ok=True)

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=csv_columns(report.metric_names), lineterminator="\n")
    writer.writeheader()
    writer.writerows(csv_rows(report))
    atomic_write_text(out_dir / "report.csv", buffer.getvalue())

    png, plot_note = plot_tradeoff(report.rows, out_dir / "report.png", metric)
    atomic_write_text(out_dir / "report.md", markdown(report, str(root), plot_note))
    if console is not None:
        print_tables(report, console)
        console.print(plot_note)
    return {"csv": out_dir / "report.csv", "md": out_dir / "report.md", "png": png}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="peftrun-report",
        description="Aggregate peftrun run records (results.json, found recursively) into one comparison table: "
                    "mean ± std over seeds, report.csv, report.md and report.png (metric vs trainable %).",
    )
    parser.add_argument("dir", help="a Hydra multirun folder, a run folder, or any tree of runs")
    parser.add_argument("--out", default=None, help="folder for report.csv/.md/.png (default: DIR)")
    parser.add_argument("--metric", default=None,
                        help="metric for the plot (default: the first metric of each task's main eval split)")
    args = parser.parse_args(argv)

    from peftrun.console import make_console

    console = make_console()
    try:
        written = write_report(args.dir, args.out, args.metric, console)
    except PeftrunError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    console.print("wrote " + ", ".join(str(p) for p in written.values() if p is not None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
