"""The on-disk tokenisation cache: ragged integer lists in a safetensors file, never a pickle.

A cache entry `<cache_dir>/tokenized/<key>.safetensors` holds, per field, `<field>.values` (every list
concatenated, int64) and `<field>.lengths` (one length per list), plus the caller's small JSON-able facts (counts,
format version) as JSON in the safetensors header metadata. Reading one can execute no code (safetensors is
tensors and a JSON header), so the cache may live on shared scratch. An entry that does not read back as the
expected fields (corrupt, truncated, planted, another version) is reported with a warning naming the file and
rebuilt by the caller; writes are atomic (peftrun/io.py).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch

from peftrun.errors import first_line
from peftrun.io import atomic_write

log = logging.getLogger(__name__)
FORMAT = "peftrun-token-cache-1"
T = TypeVar("T")


def cache_path(cache_dir: str | None, name: str) -> Path | None:
    """`<cache_dir>/tokenized/<name>.safetensors`, None when caching is off."""
    return Path(cache_dir).expanduser() / "tokenized" / f"{name}.safetensors" if cache_dir else None


def save_lists(path: Path, fields: dict[str, Sequence[Sequence[int]]], meta: dict[str, Any]) -> None:
    """Write `fields` (name -> list of int lists) and `meta` (JSON-able) to `path`, atomically; a failed write is
    a warning (the caller has the data in memory)."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    for name, rows in fields.items():
        tensors[f"{name}.lengths"] = torch.tensor([len(r) for r in rows], dtype=torch.int64)
        tensors[f"{name}.values"] = torch.tensor([x for r in rows for x in r], dtype=torch.int64)
    header = {"format": FORMAT, "meta": json.dumps(meta)}
    try:
        atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=header))
    except OSError as err:  # a full or read-only cache costs the reuse, not the run
        log.warning("could not write tokenisation cache entry %s (%s); continuing without it", path,
                    err.strerror or first_line(err))


def load_cached(path: Path | None, names: Sequence[str], decode: Callable[[dict[str, list[list[int]]], dict], T]) -> T | None:
    """decode(fields, meta) of a cache entry; None when there is none, or (with a warning) when it is unusable:
    unreadable, missing a field, or rejected by `decode` (which raises on lists that do not fit together)."""
    if path is None or not path.exists():
        return None
    try:
        return decode(*_read(path, names))
    except Exception as err:  # safetensors, json and shape errors alike: any unusable entry is rebuilt
        log.warning("ignoring unusable tokenisation cache entry %s (%s); rebuilding it", path, first_line(err))
        return None


def _read(path: Path, names: Sequence[str]) -> tuple[dict[str, list[list[int]]], dict[str, Any]]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        header = handle.metadata() or {}
        if header.get("format") != FORMAT:
            raise ValueError(f"format {header.get('format')!r}, expected {FORMAT!r}")
        meta = json.loads(header["meta"])
        if not isinstance(meta, dict):
            raise ValueError("metadata is not a JSON object")
        fields: dict[str, list[list[int]]] = {}
        for name in names:
            lengths = handle.get_tensor(f"{name}.lengths")
            values = handle.get_tensor(f"{name}.values")
            if lengths.dim() != 1 or values.dim() != 1 or bool((lengths < 0).any()) or int(lengths.sum()) != len(values):
                raise ValueError(f"field {name!r}: lengths do not add up to its values")
            sizes = lengths.tolist()
            fields[name] = [chunk.tolist() for chunk in torch.split(values, sizes)] if sizes else []
    return fields, meta
