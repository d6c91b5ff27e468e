"""Do the task's input lengths fit the backbone's position table? Checked from the config alone, before weights.

A learned absolute position table (GPT-2 `n_positions`, BERT / BART `max_position_embeddings`, RoBERTa's minus
its padding offset of 2) has one row per position: a longer input indexes past it and dies with an IndexError
deep inside the forward (a device assert on GPU). T5's relative position buckets and Llama's rotary positions
have no such limit. Each family module declares its tables (`Family.positions`).

Positions a run can reach, by layout (peftrun/data.py, peftrun/head_data.py), with V = virtual positions of
the method (soft-prompt tokens inserted into the input; a prefix that shifts absolute positions):
    decoder, text     max_source_length + max(max_target_length, generation.max_new_tokens) + V
                      (source + EOS + target + EOS in training, prompt + new tokens in generation)
    encoder-decoder   encoder: max_source_length + V; decoder: max(max_target_length, generation.max_new_tokens)
    head formulation  max_source_length + V (the text pair with its special tokens, or the sentence)

The position limit is read from what describes the architecture without loading it: a tiny backbone's
config (peftrun/backbones/tiny.py), `backbone.config_path` for init=random, `<source>/config.json` for a
local directory, or the cached config.json of a hub id. A hub id not in the local cache cannot be checked
before loading; `check_loaded_lengths` checks it on the loaded model's config instead.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from peftrun.errors import PeftrunError


def architecture_config(backbone_cfg: Any) -> dict[str, Any] | None:
    """The backbone's config.json as a dict (with "model_type"), from local files only; None when not available
    without the network (a hub id outside the local cache)."""
    if backbone_cfg.source == "tiny":
        from peftrun.backbones.families import FAMILIES

        family = FAMILIES.get(backbone_cfg.family)
        if family is None or family.tiny is None:
            return None  # load_backbone names the problem
        model_type, defaults = family.tiny
        return {"model_type": model_type, **defaults, **dict(backbone_cfg.tiny)}
    if backbone_cfg.init == "random" and backbone_cfg.config_path is not None:
        path = Path(os.path.expanduser(backbone_cfg.config_path))
        return _read_json(path / "config.json" if path.is_dir() else path)
    source = os.path.expanduser(backbone_cfg.source)
    if os.path.isdir(source):
        return _read_json(Path(source) / "config.json")
    from peftrun.backbones.hub import cached_path

    found = cached_path(backbone_cfg.source, backbone_cfg.revision)
    return _read_json(Path(found)) if found else None


def _read_json(path: Path) -> dict[str, Any] | None:
    """A config.json's content, or None when missing or unreadable (load_backbone reports those)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and "model_type" in data else None


def position_limit(config: dict[str, Any]) -> tuple[int | None, str]:
    """(positions the model can read, the config key that says so); (None, reason) for relative or rotary
    positions. The table is declared by the model type's family module (`Family.positions`)."""
    from peftrun.backbones.families import position_table_of

    model_type = config.get("model_type")
    table = position_table_of(str(model_type))
    if table is None:
        return None, f"{model_type} has no absolute position table"
    key, offset = table.key, table.offset
    value = config.get(key)
    if value is None and key != "max_position_embeddings":
        value = config.get("max_position_embeddings")  # e.g. GPT2Config's alias of n_positions
    if value is None:  # the config class's default, as transformers would fill it in
        from transformers import CONFIG_MAPPING

        value = getattr(CONFIG_MAPPING[model_type](), key)
    return int(value) - offset, f"{key} {value} - {offset}" if offset else key


def virtual_positions(method: dict[str, Any], kind: str) -> int:
    """Positions the method's deltas add before or inside the input (`method` = the resolved method config),
    as each delta's spec declares them (peftrun.methods.spec; torch-free)."""
    from peftrun.methods.spec import method_virtual_positions

    return method_virtual_positions(method, kind)


def check_lengths(task_cfg: Any, kind: str, formulation: str, limit: int, limit_key: str, name: str,
                  virtual: int = 0) -> None:
    """Raise one PeftrunError line when an input the run can build is longer than `limit` positions.

    kind: "decoder" | "encoder-decoder" | "encoder"; formulation: "text" or a head name.
    """
    src, tgt, new = task_cfg.max_source_length, task_cfg.max_target_length, task_cfg.generation.max_new_tokens
    where = f"backbone {name!r} reads at most {limit} positions ({limit_key})"
    terms = [("task.max_source_length", src)]
    if formulation == "text" and kind == "decoder":
        terms.append(("task.max_target_length", tgt) if tgt >= new else ("task.generation.max_new_tokens", new))
    if virtual:
        terms.append(("virtual tokens of the method", virtual))
    total = sum(value for _, value in terms)
    if total > limit:
        if len(terms) == 1:
            said = f"task.max_source_length={src}"
        else:
            said = f"{' + '.join(k for k, _ in terms)} = {' + '.join(str(v) for _, v in terms)} = {total}"
        others = [k for k, _ in terms[1:] if k.startswith("task.")]
        fits = limit - total + src
        if fits < 1:  # no source length fits: the other terms alone fill the table
            shorten = " or ".join(k for k, _ in terms[1:])
            raise PeftrunError(f"{said} but {where}; even a 1-token source does not fit: shorten {shorten}")
        alternative = f" (or a shorter {others[0]})" if others else ""
        raise PeftrunError(f"{said} but {where}; set task.max_source_length={fits}{alternative}")
    if formulation == "text" and kind == "encoder-decoder":
        for value, key in ((tgt, "task.max_target_length"), (new, "task.generation.max_new_tokens")):
            if value > limit:
                raise PeftrunError(f"{key}={value} but {where} in its decoder; set {key}={limit}")


def check_input_lengths(cfg: Any, kind: str, formulation: str, config: dict[str, Any] | None = None) -> bool:
    """Check `cfg.task`'s lengths against the backbone `cfg.backbone` (see module docstring).

    config: the architecture's config dict when already known (e.g. the loaded model's); else read from local
    files. Returns False when the limit could not be determined yet (hub id not cached), True otherwise.
    """
    from omegaconf import OmegaConf

    config = config if config is not None else architecture_config(cfg.backbone)
    if config is None:
        return False
    limit, key = position_limit(config)
    if limit is None:
        return True
    method = OmegaConf.to_container(cfg.method, resolve=True) if OmegaConf.is_config(cfg.method) else dict(cfg.method)
    check_lengths(cfg.task, kind, formulation, limit, key, cfg.backbone.name, virtual_positions(method, kind))
    return True
