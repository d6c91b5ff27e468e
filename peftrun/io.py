"""Atomic file writing: the one way peftrun writes a file a reader may look at (records, adapters, reports, caches).

`atomic_write(path, write)` calls `write(tmp)` on a temporary file in `path`'s folder, flushes it to disk (fsync),
gives it the mode a plain `open()` would (0666 minus the umask: collaborators read results as they read any
other file; `mkstemp` alone gives 0600), and renames it over `path`. A reader sees the old file or the new one,
never a partial one; on any failure (full disk, a crash in `write`, an interrupt) the temporary file is removed,
the previous `path` is untouched and the error propagates.

Import-light on purpose (no torch): `peftrun-report` and `peftrun --help` use it.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

_UMASK: int | None = None


def current_umask() -> int:
    """The process umask (read from /proc on Linux; elsewhere set-and-restore once, before any threads write)."""
    global _UMASK
    if _UMASK is None:
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("Umask:"):
                    _UMASK = int(line.split()[1], 8)
        except (OSError, ValueError):
            pass
        if _UMASK is None:
            _UMASK = os.umask(0o022)
            os.umask(_UMASK)
    return _UMASK


def atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
    """Create `path` through `write(tmp_path)` (see the module doc); returns `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (best effort: not every platform / file system allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as handle:
            handle.write(data)

    return atomic_write(path, write)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """UTF-8 text (newlines written as given)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, payload: Any, indent: int | None = 2, sort_keys: bool = True) -> Path:
    """JSON (non-ASCII kept, `default=str` for paths and the like) plus a final newline."""
    text = json.dumps(payload, indent=indent, sort_keys=sort_keys, ensure_ascii=False, default=str)
    return atomic_write_text(path, text + "\n")
