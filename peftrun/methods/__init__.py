"""Methods: deltas on roles (LoRA, adapters ...) + trainability rules, accounting, save/load/merge/export.

Public API (what experiment.py / generate.py call):
    validate_method(method_cfg, anatomy)          check a method before any model is loaded
    apply_method(model, anatomy, method_cfg)      -> AppliedMethod (deltas attached, trainability set)
    load_method(model, anatomy, directory)        -> AppliedMethod restored from a saved directory (either layout)
    save_peft(applied, directory)                 write the method in peft's layout (LoRA, prefix, prompt, P-tuning)
    load_peft(model, anatomy, directory)          -> AppliedMethod from a peft directory
    rewrites_inputs(model)                        an attached delta rewrites the forward's inputs (soft prompts)
Torch-free (pre-flight checks): peftrun.methods.spec (each family's DeltaSpec: options and traits).

The names above load on first use, together with every delta family (one module per family, its torch-free
spec in <family>_spec.py): importing `peftrun.methods.spec` alone imports no torch.
"""

from __future__ import annotations

import importlib
from typing import Any

FAMILY_MODULES = ("adapter", "lora", "prefix", "soft_prompt")  # importing each registers its delta family
_PUBLIC = {
    "AppliedMethod": "applied", "apply_method": "applied", "rewrites_inputs": "applied",
    "DELTAS": "base", "Delta": "base", "register_delta": "base",
    "load_method": "loading", "load_peft": "loading", "save_peft": "peft_format", "validate_method": "validate",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    for module in FAMILY_MODULES:
        importlib.import_module(f"{__name__}.{module}")
    value = getattr(importlib.import_module(f"{__name__}.{_PUBLIC[name]}"), name)
    globals()[name] = value
    return value
