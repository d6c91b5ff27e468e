"""`peftrun-score`: score saved predictions against a task split, without a model.

    peftrun-score task=e2e task.data_dir=DIR split=test predictions=FILE [output=FILE.json]

FILE is one of (detected by extension, else by its first line):
- plain text (.txt, anything else): one prediction per line, one line per grouped example in the task's example
  order (E2E: the split's distinct MRs in order of first appearance; DART / WebNLG: entries in file order);
- JSONL (.jsonl, or a first line starting with "{"): objects with "prediction" and "input" (the linearised source or
  the raw input, e.g. the E2E MR) or "id" (an example id such as "test-3"), as in a run's predictions.jsonl
  (lines whose "split" names another split are ignored);
- TSV (.tsv, or a tab-separated first line whose first field is an input, or a header before such a line):
  `input<TAB>prediction`, as the E2E challenge's system outputs (`MR<TAB>output`, with a header).
JSONL/TSV lines are matched to examples by input (the k-th line for an input goes to the k-th example with that
input; one line for an input shared by several examples serves them all). Unmatched lines or examples left without
a prediction are an error that says how many and shows the first. Metrics print as a table; `output` also writes
them as JSON (atomically, peftrun/io.py).

Rank classification runs keep each option's scores in predictions.jsonl; `normalize=sum|mean` and / or
`calibrate=true|false` re-decide every such row (peftrun/formulations/options.py) before scoring, so one run gives
all four decision rules.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Any, NamedTuple

import hydra
from omegaconf import DictConfig, OmegaConf

from peftrun.config import CONF_DIR, register_configs
from peftrun.errors import PeftrunError
from peftrun.io import atomic_write_json

register_configs()


def score_file(task_cfg: Any, data_dir: str | None, split: str, predictions_path: str,
               rule: Rule | None = None) -> dict[str, float]:
    """The task's metrics for the predictions in `predictions_path` on the grouped examples of `split`."""
    from peftrun.tasks.base import build_task

    task = build_task(task_cfg, data_dir)
    examples = task.load(split, grouped=True)
    predictions = read_predictions(Path(predictions_path), examples, f"task {task.name} split {split}", split, rule)
    return task.score(predictions, examples)


class Rule(NamedTuple):
    """A rank classification decision rule to re-decide saved rows by (None fields: as the run decided)."""

    normalize: str | None = None
    calibrate: bool | None = None


def read_predictions(path: Path, examples: list[Any], where: str, split: str | None = None,
                     rule: Rule | None = None) -> list[str]:
    """Predictions aligned with `examples`, from a text, JSONL or TSV file (see the module doc). JSONL lines whose
    "split" field names another split than `split` are ignored (a run's predictions.jsonl holds every eval split).
    With a `rule`, JSONL rows of a rank run are re-decided by it."""
    if not path.is_file():
        raise PeftrunError(f"predictions file {path} not found; set predictions=FILE")
    lines = read_utf8(path, "the predictions file").split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the final newline ends the last line; it does not start an empty one
    lines = [line.removesuffix("\r") for line in lines]
    index = _input_index(examples)
    kind = _detect(path, lines, index)
    if rule is not None and kind != "jsonl":
        raise PeftrunError(f"{path}: normalize / calibrate re-decide a rank run's predictions.jsonl rows; this file "
                           "is not JSONL")
    if kind == "text":
        if len(lines) != len(examples):
            raise PeftrunError(
                f"{path} has {len(lines)} lines but {where} has {len(examples)} examples "
                f"(one line per grouped example, in the task's order)"
            )
        return lines
    ids = {example.id for example in examples}
    records = _jsonl_records(path, lines, split, ids, rule) if kind == "jsonl" else _tsv_records(lines, index)
    return _match(path, records, examples, index, where)


class Line(NamedTuple):
    """One prediction read from a JSONL / TSV file: where, the key naming its example, and whether it is an id."""

    number: int
    text: str
    key: str | None
    prediction: str | None
    by_id: bool = False


def read_utf8(path: Path, what: str) -> str:
    """The file's text; a file that is not UTF-8 is one PeftrunError naming it and the line of the first bad byte."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise PeftrunError(f"{path} line {line}: {what} is not UTF-8 text (byte {data[err.start]:#04x} at "
                           f"offset {err.start}); re-encode it as UTF-8") from err


def write_output(path: Path, payload: dict[str, Any]) -> None:
    """The scores as JSON at `path` (atomically); a folder or an unwritable place is one PeftrunError."""
    if path.is_dir():
        raise PeftrunError(f"output={path} is a directory; give a file name, e.g. output={path / 'scores.json'}")
    try:
        atomic_write_json(path, payload)
    except OSError as err:
        raise PeftrunError(f"cannot write output={path}: {err.strerror or err}") from err


def _input_index(examples: list[Any]) -> dict[str, list[int]]:
    """Every way a file may name an example (id, source, raw MR) -> example positions in order."""
    index: dict[str, list[int]] = {}
    for i, example in enumerate(examples):
        names = {example.id, example.source, str((example.meta or {}).get("mr", ""))} - {""}
        for name in names:
            index.setdefault(name, []).append(i)
    return index


def _detect(path: Path, lines: list[str], index: dict[str, list[int]]) -> str:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        return "jsonl"
    if suffix == ".tsv":
        return "tsv"
    first = next((line for line in lines if line.strip()), "")
    if first.lstrip().startswith("{"):
        return "jsonl"
    for line in lines[:2]:
        if "\t" in line and _tsv_fields(line)[0] in index:
            return "tsv"
    return "text"


def _tsv_fields(line: str) -> list[str]:
    return next(csv.reader([line], delimiter="\t"), [""]) or [""]


def _tsv_records(lines: list[str], index: dict[str, list[int]]) -> list[Line]:
    """(line number, line, input, prediction) per TSV row; a first row naming no input is a header."""
    records = []
    for number, line in enumerate(lines, start=1):
        fields = _tsv_fields(line)
        if number == 1 and fields[0] not in index:
            continue  # header, e.g. "MR<TAB>output"
        records.append(Line(number, line, fields[0], fields[1] if len(fields) > 1 else None))
    return records


def _jsonl_records(path: Path, lines: list[str], split: str | None, ids: set[str],
                   rule: Rule | None = None) -> list[Line]:
    """One Line per object; keyed by "id" when it names an example (one line, one example), else by "input"."""
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise PeftrunError(f"{path} line {number} is not JSON ({err.msg}): {line[:120]}") from err
        if not isinstance(obj, dict) or not isinstance(obj.get("prediction"), str):
            raise PeftrunError(f'{path} line {number} has no string "prediction" field: {line[:120]}')
        if split is not None and obj.get("split", split) != split:
            continue
        if rule is not None:
            obj["prediction"] = _redecide(path, number, obj, rule)
        by_id = obj.get("id") is not None and str(obj["id"]) in ids
        key = str(obj["id"]) if by_id else obj.get("input") if isinstance(obj.get("input"), str) else obj.get("id")
        records.append(Line(number, line, None if key is None else str(key), obj["prediction"], by_id))
    return records


def _redecide(path: Path, number: int, row: dict[str, Any], rule: Rule) -> str:
    """The row's prediction under `rule` (peftrun/formulations/options.py); unset fields keep the run's choice."""
    from peftrun.formulations.options import rechoose

    if not isinstance(row.get("scores"), dict) or not isinstance(row.get("option_labels"), list):
        raise PeftrunError(f"{path} line {number} has no option scores (\"scores\", \"option_labels\"): only a rank "
                           "run's predictions (task.formulation=rank) can be re-decided")
    normalize = rule.normalize or row.get("normalize") or "sum"
    calibrate = rule.calibrate if rule.calibrate is not None else row.get("content_free") is not None
    try:
        return rechoose(row, normalize, calibrate)
    except (ValueError, KeyError, IndexError, TypeError) as err:
        raise PeftrunError(f"{path} line {number}: {err}") from err


def _match(path: Path, records: list[Line], examples: list[Any], index: dict[str, list[int]], where: str) -> list[str]:
    """Assign each record to the next example of its input; an input's last prediction fills its other examples.
    A record keyed by example id scores that example only; an id named twice is an error."""
    found: list[str | None] = [None] * len(examples)
    last: dict[str, str] = {}
    unmatched: list[tuple[int, str]] = []
    id_lines: dict[str, int] = {}
    for number, line, key, prediction, by_id in records:
        if by_id:
            if key in id_lines:
                raise PeftrunError(f"{path} line {number}: example id {key!r} was already predicted on line "
                                   f"{id_lines[key]}; give one prediction per example id")
            id_lines[str(key)] = number
            slot = next(i for i in index[str(key)] if examples[i].id == key)
            if found[slot] is not None or prediction is None:
                unmatched.append((number, line))
            else:
                found[slot] = prediction
            continue
        slots = index.get(key or "", [])
        free = next((i for i in slots if found[i] is None), None)
        if free is None or prediction is None:
            unmatched.append((number, line))
            continue
        found[free] = prediction
        last[key or ""] = prediction
    for key, prediction in last.items():
        for i in index[key]:
            if found[i] is None:
                found[i] = prediction
    missing = [i for i, p in enumerate(found) if p is None]
    if unmatched or missing:
        parts = []
        if unmatched:
            number, line = unmatched[0]
            parts.append(f"{len(unmatched)} of {len(records)} lines match no example of {where} "
                         f"(first: line {number}: {line[:120]!r})")
        if missing:
            parts.append(f"{len(missing)} of {len(examples)} examples have no prediction "
                         f"(first: {examples[missing[0]].id}: {examples[missing[0]].source[:80]!r})")
        raise PeftrunError(f"{path}: " + "; ".join(parts))
    return [p for p in found if p is not None]


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="score")
def main(cfg: DictConfig) -> None:
    from rich.table import Table

    from peftrun.console import make_console

    try:
        if OmegaConf.is_missing(cfg, "predictions"):
            raise PeftrunError("no predictions file given; set predictions=FILE")
        rule = None if cfg.normalize is None and cfg.calibrate is None else Rule(cfg.normalize, cfg.calibrate)
        scores = score_file(cfg.task, cfg.paths.data_dir, cfg.split, cfg.predictions, rule)
        if cfg.output:
            payload = {"task": cfg.task.name, "split": cfg.split, "predictions": str(Path(cfg.predictions).resolve()),
                       "metrics": scores}
            write_output(Path(cfg.output), payload)
    except PeftrunError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    table = Table(title=f"scores: {cfg.task.name} {cfg.split}", title_justify="left", caption=str(cfg.predictions))
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in scores.items():
        table.add_row(name, f"{value:.2f}")
    make_console().print(table)


if __name__ == "__main__":
    main()
