"""Loading helpers shared by every task family: official files, the hub, parse caching, skip warnings.

Reading a data file goes through `read_text` / `read_json` / `read_xml` / `read_csv_rows`, and the parse of a
split through `cached_parse`: a file that is not what its task expects (not UTF-8, empty, truncated or invalid
JSON / XML / CSV, a wrong top-level shape) is one `DataFileError` naming the file, the line where known, and the
fix; the CLI prints it as one `error:` line. Malformed rows inside a readable file are skipped and counted
(`warn_skipped`), as before.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from peftrun.errors import PeftrunError, first_line

log = logging.getLogger(__name__)
T = TypeVar("T")
_CACHE: dict[tuple, Any] = {}


class DataFileError(PeftrunError):
    """A data file its task cannot read. The message names the file (and line), what is wrong, and the fix."""

    def __init__(self, task: str, path: Path, problem: str, line: int | None = None, fix: str = "") -> None:
        where = f"{path} line {line}" if line is not None else str(path)
        hint = fix or f"point task.data_dir at the official {task} files (or repair this one)"
        super().__init__(f"{task}: {where}: {problem}; {hint}")
        self.path = path


# Parse errors a file's content can cause, whatever the reader; anything else is a bug and keeps its traceback.
CONTENT_ERRORS = (UnicodeDecodeError, json.JSONDecodeError, ET.ParseError, csv.Error)


def cached_parse(task: str, split: str, files: Sequence[Path], parse: Callable[[], T]) -> T:
    """parse() once per (task, split, files and their modification times) in this process. The result is shared:
    callers must not mutate it (Groups are frozen; load() builds fresh Examples from them). A content or read
    error that `parse` let through becomes a DataFileError naming the file(s)."""
    key = (task, split, tuple((str(p.resolve()), p.stat().st_mtime_ns) for p in files))
    if key not in _CACHE:
        try:
            _CACHE[key] = parse()
        except (*CONTENT_ERRORS, OSError) as err:
            named = files[0] if len(files) == 1 else Path(", ".join(str(f) for f in files))
            raise DataFileError(task, named, f"cannot be read ({type(err).__name__}: {first_line(err)})") from err
    return _CACHE[key]


def read_text(path: Path, task: str) -> str:
    """The file as text: UTF-8 (a BOM is dropped), not empty; else a DataFileError with the line of the problem."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DataFileError(task, path, f"cannot be read ({err.strerror or first_line(err)})") from err
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise DataFileError(task, path, f"is not UTF-8 text (byte {data[err.start]:#04x} at offset {err.start})",
                            line, "re-encode it as UTF-8, or point task.data_dir at the official files") from err
    if not text.strip():
        raise DataFileError(task, path, "is empty")
    return text


def read_json(path: Path, task: str, shape: type | None = None, what: str = "", text: str | None = None) -> Any:
    """The file's JSON value (optionally required to be a `shape`, e.g. list); errors name the line and column.
    `text`: the file's content when the caller has already read it (`read_text`)."""
    text = read_text(path, task) if text is None else text
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataFileError(task, path, f"is not valid JSON ({err.msg}, column {err.colno}); truncated?",
                            err.lineno) from err
    if shape is not None and not isinstance(value, shape):
        raise DataFileError(task, path, f"holds a JSON {type(value).__name__}, expected {what or shape.__name__}")
    return value


def read_json_lines(path: Path, task: str, text: str | None = None) -> tuple[list[Any], int]:
    """(parsed values, lines that are not JSON) of a JSON-lines file; blank lines are ignored."""
    values, bad = [], 0
    for line in (read_text(path, task) if text is None else text).splitlines():
        if not line.strip():
            continue
        try:
            values.append(json.loads(line))
        except json.JSONDecodeError:
            bad += 1
    return values, bad


def read_xml(path: Path, task: str, root: str | None = None) -> ET.Element:
    """The root element (optionally required to be named `root`); a parse error names its line."""
    text = read_text(path, task)
    try:
        element = ET.fromstring(text)
    except ET.ParseError as err:
        line = err.position[0] if getattr(err, "position", None) else None
        raise DataFileError(task, path, f"is not well-formed XML ({first_line(err)}); truncated?", line) from err
    if root is not None and element.tag != root:
        raise DataFileError(task, path, f"has root element <{element.tag}>, expected <{root}>")
    return element


def read_csv_rows(path: Path, task: str, dict_rows: bool = False) -> list[Any]:
    """Rows of a CSV file (lists, or dicts keyed by the header with `dict_rows`); a bad row names its line."""
    text = read_text(path, task)
    handle = io.StringIO(text, newline="")
    reader: Any = csv.DictReader(handle) if dict_rows else csv.reader(handle)
    rows = []
    try:
        for row in reader:
            rows.append(row)
    except csv.Error as err:  # e.g. a field above csv.field_size_limit(), or a NUL byte
        raise DataFileError(task, path, f"is not readable CSV ({first_line(err)})", reader.line_num) from err
    return rows


def warn_skipped(skipped: int, total: int, where: str, what: str) -> None:
    """One warning per parsed file set, never one per row."""
    if skipped:
        log.warning("skipped %d of %d malformed rows in %s (%s)", skipped, total, where, what)


def require_file(path: Path, task: str, fix: str = "") -> Path:
    """`path` itself, or a PeftrunError naming it and the fix."""
    if not path.is_file():
        hint = fix or f"point task.data_dir at the folder of the official {task} files"
        raise PeftrunError(f"{task}: missing file {path}; {hint}")
    return path


def require_dir(data_dir: str, task: str) -> Path:
    path = Path(data_dir).expanduser()
    if not path.is_dir():
        raise PeftrunError(f"{task}: task.data_dir={data_dir} is not a directory; set task.data_dir=DIR (the official files)")
    return path


def load_hub(task: str, hub_id: str | None, data_hint: str) -> Any:
    """`datasets.load_dataset` of "ID" or "ID:CONFIG", failing fast with one PeftrunError line when offline.

    Offline means HF_HUB_OFFLINE / HF_DATASETS_OFFLINE set, or the hub endpoint unreachable within 3 s (checked
    before datasets starts its own retries). Returns the DatasetDict.
    """
    from peftrun.backbones.hub import hub_reachable

    fix = f"set task.data_dir=DIR (the official {task} files{data_hint})"
    if not hub_id:
        raise PeftrunError(f"{task}: task.data_dir and task.hub_id are both null; {fix}")
    offline = [v for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
               if os.environ.get(v, "").strip().lower() in {"1", "true", "yes", "on"}]
    unreachable = None if offline else hub_reachable()
    if unreachable is not None:  # datasets would retry for minutes; with no network it may only read its cache
        os.environ["HF_DATASETS_OFFLINE"] = "1"
    from datasets import load_dataset

    name, _, config = hub_id.partition(":")
    try:
        return load_dataset(name, config or None)
    except Exception as err:  # datasets raises many types (connection, missing repo, script datasets ...)
        first = first_line(err)
        why = f"{offline[0]} is set and it is not in the datasets cache" if offline else (
            f"the hub is unreachable ({unreachable}) and it is not in the datasets cache" if unreachable else first)
        raise PeftrunError(f"{task}: cannot load hub dataset {hub_id!r}: {why}; {fix}") from err


def hub_split(dataset: Any, split: str, task: str, hub_id: str) -> Any:
    """The hub split for one of ours (validation is "dev" or "val" in some hub datasets)."""
    aliases = {"validation": ("validation", "dev", "val"), "test": ("test",), "train": ("train",)}
    for name in aliases.get(split, (split,)):
        if name in dataset:
            return dataset[name]
    raise PeftrunError(f"{task}: hub dataset {hub_id!r} has no split {split!r} (it has {', '.join(dataset)}); set task.data_dir=DIR")


