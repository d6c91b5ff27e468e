"""File names of a method directory and its atomic writers (shared by the peftrun and the peft layouts).

Each file is written to a temporary file in the same directory and renamed onto its name, so a reader never
sees half a file. (Project-wide, one atomic writer is meant to live in peftrun/io.py; this module is the
methods' door to it.)
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

WEIGHTS_NAME = "adapter_model.safetensors"
CONFIG_NAME = "adapter_config.json"


def write_atomic(path: Path, write: Callable[[str], Any]) -> None:
    """Call write(tmp_path), then rename onto `path` (a reader never sees a half-written file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w") as handle:
            json.dump(payload, handle, indent=2, sort_keys=True)
            handle.write("\n")

    write_atomic(path, write)


def write_safetensors_atomic(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    plain = {k: v.detach().contiguous() for k, v in tensors.items()}
    write_atomic(path, lambda tmp: save_file(plain, tmp, metadata={"format": "pt"}))


def read_json(path: Path) -> dict[str, Any]:
    with open(path) as handle:
        return json.load(handle)
