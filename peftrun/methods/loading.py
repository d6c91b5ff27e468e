"""Load a saved method onto a fresh base model: peftrun's layout (applied.py) or peft's (peft_format.py).

Depends on both layouts; neither depends on it (no import cycle).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import nn

from peftrun.backbones.anatomy import Anatomy
from peftrun.errors import PeftrunError
from peftrun.methods.applied import FORMAT, AppliedMethod, apply_method
from peftrun.methods.files import CONFIG_NAME, WEIGHTS_NAME, read_json
from peftrun.methods.peft_format import read_peft
from peftrun.methods.trainable import head_parameter_names


def read_config(directory: str | os.PathLike) -> dict[str, Any]:
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise PeftrunError(f"no {CONFIG_NAME} in {directory}; point to a directory written by a peftrun run (adapter/)")
    return read_json(path)


def load_method(
    model: nn.Module, anatomy: Anatomy, directory: str | os.PathLike, tokenizer: Any = None
) -> AppliedMethod:
    """Re-apply the saved method to a fresh base `model` and load its tensors (peftrun or peft layout).

    A head saved with the method (apply_method's train_head) is recognised from the saved tensor names;
    `tokenizer` as in apply_method (needed by soft prompts with text)."""
    from safetensors.torch import load_file

    config = read_config(directory)
    if "peft_type" in config:
        return load_peft(model, anatomy, directory)
    if config.get("format") != FORMAT:
        raise PeftrunError(f"{Path(directory) / CONFIG_NAME} is neither a peftrun nor a peft adapter config")
    if config["family"] != anatomy.family:
        raise PeftrunError(
            f"{directory} holds a method for a {config['family']} backbone, not {anatomy.family}; "
            f"load it onto a {config['family']} backbone"
        )
    head = head_parameter_names(model, anatomy)
    train_head = bool(head) and head <= set(config.get("backbone_tensors", []))
    applied = apply_method(model, anatomy, config["method"], tokenizer=tokenizer, train_head=train_head)
    tensors = load_file(str(Path(directory) / WEIGHTS_NAME), device=str(next(model.parameters()).device))
    applied.load_state(tensors)
    return applied


def load_peft(model: nn.Module, anatomy: Anatomy, directory: str | os.PathLike) -> AppliedMethod:
    """Apply a peft directory (LoRA, prefix, prompt tuning, P-tuning) to a fresh base `model` as the equivalent
    peftrun method (same outputs as PeftModel; see each family's `from_peft`)."""
    method, state_of = read_peft(model, anatomy, directory)
    applied = apply_method(model, anatomy, method)
    (delta,) = applied.deltas.values()
    state = state_of(delta)
    try:
        delta.load_saved_state_dict(state)
    except RuntimeError as err:  # shape mismatch: an adapter of another architecture
        raise PeftrunError(f"{directory}: {delta.kind} tensors do not fit this model "
                           f"({str(err).splitlines()[-1].strip()})") from err
    return applied
