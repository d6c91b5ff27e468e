"""peftrun/io.py: the one atomic writer. A failure at any point (full disk) keeps the previous file and leaves no
temporary file; new files get the umask's mode, not mkstemp's 0600; every writer in peftrun goes through it."""

from __future__ import annotations

import builtins
import errno
import json
import os
from pathlib import Path

import pytest

from peftrun.io import atomic_write, atomic_write_bytes, atomic_write_json, atomic_write_text, current_umask
from tests.conftest import ROOT


def _full_disk_open(real_open):
    """open() whose file objects raise ENOSPC on write, as a full disk does."""

    class FullDisk:
        def __init__(self, handle):
            self.handle = handle

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

    def fake(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        return FullDisk(handle) if "w" in mode else handle

    return fake


@pytest.mark.parametrize("writer", ["text", "bytes", "json", "record", "report"])
def test_full_disk_keeps_previous_file_and_leaves_no_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          writer: str) -> None:
    from peftrun.errors import PeftrunError

    path = tmp_path / ("results.json" if writer in ("record", "report") else "out.txt")
    path.write_text("previous\n")
    monkeypatch.setattr(builtins, "open", _full_disk_open(builtins.open))
    with pytest.raises(PeftrunError if writer == "report" else OSError) as caught:
        if writer == "text":
            atomic_write_text(path, "new")
        elif writer == "bytes":
            atomic_write_bytes(path, b"new")
        elif writer == "json":
            atomic_write_json(path, {"new": 1})
        elif writer == "record":
            from peftrun.records import write_record

            write_record(tmp_path, {"status": "complete"})
        else:
            from peftrun.report import write_report

            write_report(tmp_path, tmp_path)
    if writer == "report":  # the command's one error line names the folder and the cause
        assert "No space left on device" in str(caught.value)
    else:
        assert caught.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert path.read_text() == "previous\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_failure_inside_write_callback_cleans_up(tmp_path: Path) -> None:
    path = tmp_path / "adapter_model.safetensors"

    def write(tmp: str) -> None:
        Path(tmp).write_bytes(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, write)
    assert list(tmp_path.iterdir()) == []


def test_files_follow_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        import peftrun.io as io_module

        io_module._UMASK = None  # read it again
        assert current_umask() == 0o027
        path = atomic_write_json(tmp_path / "a.json", {"x": "é"})
        assert path.stat().st_mode & 0o777 == 0o640
        assert json.loads(path.read_text(encoding="utf-8")) == {"x": "é"}
    finally:
        os.umask(old)
        io_module._UMASK = None


def test_one_home_for_atomic_writes() -> None:
    """No module but peftrun/io.py creates temporary files and renames them (issue 10)."""
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "peftrun").rglob("*.py")
                 if p.name != "io.py" and any(s in p.read_text() for s in ("mkstemp", "NamedTemporaryFile", "os.replace("))]
    assert offenders == []
