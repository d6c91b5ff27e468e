"""Exact parameter accounting of a model with deltas attached.

    total      every parameter of the model, deltas included (tied tensors counted once)
    backbone   parameters of the original model (total - delta parameters)
    trainable  parameters with requires_grad (deltas + trainable backbone tensors)
    saved      what the method's checkpoint holds (delta saved tensors + trainable backbone tensors)
    *_pct      percent of `backbone`
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from peftrun.methods.base import Delta


def param_report(model: nn.Module, deltas: Mapping[str, Delta], backbone_saved: int) -> dict[str, Any]:
    """Counts for `model` with `deltas` attached; `backbone_saved` = numel of backbone tensors a save writes."""
    delta_ids = {id(p) for d in deltas.values() for p in d.parameters()}
    total = trainable = backbone_trainable = 0
    for param in model.parameters():  # deduplicates tied parameters
        total += param.numel()
        if param.requires_grad:
            trainable += param.numel()
            if id(param) not in delta_ids:
                backbone_trainable += param.numel()
    backbone = total - sum(p.numel() for d in deltas.values() for p in d.parameters())
    per_delta = {}
    saved = backbone_saved
    for name, delta in deltas.items():
        delta_saved = sum(t.numel() for t in delta.saved_state_dict().values())
        saved += delta_saved
        per_delta[name] = {
            "kind": delta.kind,
            "trainable": sum(p.numel() for p in delta.parameters() if p.requires_grad),
            "saved": delta_saved,
            "per_role": delta.per_role_counts(),
        }
    return {
        "total": total,
        "backbone": backbone,
        "trainable": trainable,
        "backbone_trainable": backbone_trainable,
        "saved": saved,
        "trainable_pct": 100.0 * trainable / backbone if backbone else 0.0,
        "saved_pct": 100.0 * saved / backbone if backbone else 0.0,
        "per_delta": per_delta,
    }
