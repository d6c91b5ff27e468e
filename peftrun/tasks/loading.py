"""Loading helpers shared by every task family: official files, the hub, parse caching, skip warnings."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from peftrun.errors import PeftrunError

log = logging.getLogger(__name__)
T = TypeVar("T")
_CACHE: dict[tuple, Any] = {}


def cached_parse(task: str, split: str, files: Sequence[Path], parse: Callable[[], T]) -> T:
    """parse() once per (task, split, files and their modification times) in this process. The result is shared:
    callers must not mutate it (Groups are frozen; load() builds fresh Examples from them)."""
    key = (task, split, tuple((str(p.resolve()), p.stat().st_mtime_ns) for p in files))
    if key not in _CACHE:
        _CACHE[key] = parse()
    return _CACHE[key]


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
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
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


