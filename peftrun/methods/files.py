"""File names of a method directory and its atomic writers (shared by the peftrun and the peft layouts).

Each file is written to a temporary file in the same directory and renamed onto its name, so a reader never
sees half a file. (Project-wide, one atomic writer is meant to live in peftrun/io.py; this module is the
methods' door to it.)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from peftrun.io import atomic_write, atomic_write_json

WEIGHTS_NAME = "adapter_model.safetensors"
CONFIG_NAME = "adapter_config.json"


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    atomic_write_json(path, payload)


def write_safetensors_atomic(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    plain = {k: v.detach().contiguous() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(plain, tmp, metadata={"format": "pt"}))


def read_json(path: Path) -> dict[str, Any]:
    with open(path) as handle:
        return json.load(handle)
