"""A run directory belongs to one config and one process at a time.

- `claim(run_dir)`: an exclusive `flock` on `<run_dir>/.peftrun.lock` (holding the owner's pid and host) for the
  whole run. The kernel drops the lock when its process ends, however it ends (kill -9 included), so a stale lock
  file never blocks the next run; a second live run in the directory fails at once with one line.
- `check_reuse`: a directory whose record is complete, or that holds checkpoints, keeps its config: a rerun with
  another config is refused (one line naming the way out) instead of overwriting results, adapter and predictions.
"""

from __future__ import annotations

import fcntl
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from peftrun.errors import PeftrunError
from peftrun.records import RECORD_NAME, read_record

LOCK_NAME = ".peftrun.lock"
# Where files live and how progress is shown: the same run (a resumed job may run on another node).
SAME_RUN_KEYS = ("trainer.resume", "paths", "logger")


@contextmanager
def claim(run_dir: str | Path) -> Iterator[None]:
    """Hold `run_dir`'s lock for the block; PeftrunError naming the owner when another live process holds it."""
    path = Path(run_dir) / LOCK_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            raise PeftrunError(f"{run_dir} is in use by another peftrun run ({owner}); wait for it to end, or "
                               "choose another hydra.run.dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the flock


def previous_record(run_dir: str | Path) -> dict[str, Any] | None:
    """The record already in `run_dir` (None when there is none); an unreadable one is an error naming the file."""
    try:
        return read_record(run_dir)
    except (OSError, ValueError) as err:
        raise PeftrunError(f"{Path(run_dir) / RECORD_NAME} is unreadable ({type(err).__name__}); move it away or "
                           "choose another hydra.run.dir") from None


def changed_keys(before: dict[str, Any], after: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted config keys whose values differ, except SAME_RUN_KEYS."""
    changed = []
    for key in sorted(set(before) | set(after)):
        name = f"{prefix}{key}"
        old, new = before.get(key), after.get(key)
        if name in SAME_RUN_KEYS:
            continue
        if isinstance(old, dict) and isinstance(new, dict):
            changed += changed_keys(old, new, name + ".")
        elif old != new:
            changed.append(name)
    return changed


def check_reuse(run_dir: str | Path, previous: dict[str, Any] | None, config: dict[str, Any]) -> bool:
    """True when `run_dir` already holds this config's complete run (skip it); PeftrunError when it holds a
    complete run or checkpoints of another config; False otherwise (start or resume)."""
    if previous is None:
        return False
    run_dir = Path(run_dir)
    changed = changed_keys(previous.get("config") or {}, config)
    status = previous.get("status")
    if not changed:
        return status == "complete"
    what = ", ".join(changed[:5]) + (" ..." if len(changed) > 5 else "")
    if status == "complete":
        raise PeftrunError(f"{run_dir} holds a complete run of a different config ({what}); choose another "
                           f"hydra.run.dir, or delete {run_dir} to replace it")
    if any((run_dir / "checkpoints").glob("checkpoint-*")):
        raise PeftrunError(f"{run_dir} holds checkpoints of a run with a different config ({what}); choose another "
                           f"hydra.run.dir, or delete {run_dir / 'checkpoints'} to start over")
    return False
