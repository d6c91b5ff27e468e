"""peft's on-disk layout, both ways, for every delta family whose spec names a `peft_type`.

    adapter_config.json          peft's config: peft_type, task_type, base_model_name_or_path, inference_mode,
                                 + the family's fields (Delta.to_peft)
    adapter_model.safetensors    peft's tensor names (LoRA: "base_model.model.<path>.lora_A.weight" ...;
                                 prompt learning: "prompt_embeddings")

`save_peft` writes a method that is one such delta with `train=none` (peft's adapters hold no backbone tensor),
so `PeftModel.from_pretrained(base, directory)` rebuilds it. `read_peft` turns a peft directory back into a
peftrun method config and its tensors (`peftrun.methods.load_peft` applies them). What one side cannot express
is one error line naming it; each family documents its mapping next to its `to_peft` / `from_peft`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from peftrun.backbones.anatomy import Anatomy
from peftrun.errors import PeftrunError
from peftrun.methods.base import DELTAS, Delta
from peftrun.methods.files import CONFIG_NAME, WEIGHTS_NAME, read_json, write_json_atomic, write_safetensors_atomic

if TYPE_CHECKING:
    from peftrun.methods.applied import AppliedMethod

PEFT_PREFIX = "base_model.model."  # LoRA tensor names in peft's files
PROMPT_KEY = "prompt_embeddings"  # the one tensor of peft's prompt-learning methods (prefix, prompt, P-tuning)
METHOD_FIXED = ("name", "train", "top_k", "deltas")  # MethodConfig fields that are not knobs


def task_type(model: nn.Module) -> str | None:
    """peft's task type of a transformers model (CAUSAL_LM, SEQ_2_SEQ_LM), None for others."""
    name = type(model).__name__
    if name.endswith(("ForCausalLM", "LMHeadModel")):
        return "CAUSAL_LM"
    if name.endswith(("ForConditionalGeneration", "ForSeq2SeqLM")):
        return "SEQ_2_SEQ_LM"
    return None


def take(tensors: dict[str, torch.Tensor], key: str) -> torch.Tensor:
    """Pop `key` from a peft file's tensors; a missing key is an error (truncated or foreign checkpoint)."""
    if key not in tensors:
        raise PeftrunError(f"{WEIGHTS_NAME} lacks {key!r} (a truncated or foreign checkpoint?)")
    return tensors.pop(key)


def peft_families() -> dict[str, type[Delta]]:
    """peft_type -> the delta family that reads and writes it."""
    return {cls.spec_class.peft_type: cls for cls in DELTAS.values() if cls.spec_class.peft_type}


def save_peft(applied: AppliedMethod, directory: str | os.PathLike) -> Path:
    """Write `applied` (one delta with a peft_type, train=none) in peft's layout; PeftrunError where peft cannot
    express it."""
    deltas = list(applied.deltas.values())
    if len(deltas) != 1 or deltas[0].spec_class.peft_type is None:
        kinds = [d.kind for d in deltas]
        known = sorted(cls.kind for cls in peft_families().values())
        raise PeftrunError(f"the peft layout holds one delta of a kind peft has ({', '.join(known)}); this method "
                           f"has {kinds}; use save() instead")
    if applied.method["train"] != "none":
        raise PeftrunError(
            f"method.train={applied.method['train']} also trains backbone tensors, which peft's layout does "
            "not hold; use save() instead"
        )
    (delta,) = deltas
    own, tensors = delta.to_peft(applied.model)
    config = {
        "peft_type": delta.spec_class.peft_type,
        "task_type": task_type(applied.model),
        "base_model_name_or_path": getattr(getattr(applied.model, "config", None), "_name_or_path", None) or None,
        "inference_mode": True,
        **own,
    }
    directory = Path(directory)
    write_safetensors_atomic(directory / WEIGHTS_NAME, tensors)
    write_json_atomic(directory / CONFIG_NAME, config)
    return directory


def read_peft(model: nn.Module, anatomy: Anatomy, directory: str | os.PathLike
              ) -> tuple[dict[str, Any], Callable[[Delta], dict[str, torch.Tensor]]]:
    """(the peftrun method config of a peft directory, a function giving the attached delta's saved state)."""
    from safetensors.torch import load_file

    from peftrun.config import MethodConfig

    directory = Path(directory)
    config = read_json(directory / CONFIG_NAME)
    families = peft_families()
    peft_type = config.get("peft_type")
    if peft_type not in families:
        raise PeftrunError(f"{directory}: peft_type={peft_type!r}; peftrun reads {', '.join(sorted(families))}")
    tensors = load_file(str(directory / WEIGHTS_NAME), device=str(next(model.parameters()).device))
    cls = families[peft_type]
    try:
        item, state_of = cls.from_peft(config, tensors, model, anatomy)
    except PeftrunError as err:
        raise PeftrunError(f"{directory}: {err}") from err
    knobs = [f.name for f in fields(MethodConfig) if f.name not in METHOD_FIXED]
    method = {"name": cls.kind, "train": "none", "top_k": 0, **{k: item[k] for k in knobs if k in item},
              "deltas": [item]}

    def state(delta: Delta) -> dict[str, torch.Tensor]:
        try:
            out = state_of(delta)
        except PeftrunError as err:
            raise PeftrunError(f"{directory}: {err}") from err
        if tensors:
            raise PeftrunError(f"{directory}: unexpected tensors {sorted(tensors)[:3]} in {WEIGHTS_NAME}")
        return out

    return method, state
