"""Methods: deltas on roles (LoRA, adapters ...) + trainability rules, accounting, save/load/merge/export.

Public API (what train.py / cli.py call):
    validate_method(method_cfg, anatomy)          check a method before any model is loaded
    apply_method(model, anatomy, method_cfg)      -> AppliedMethod (deltas attached, trainability set)
    load_method(model, anatomy, directory)        -> AppliedMethod restored from a saved adapter directory
    load_peft(model, anatomy, directory)          -> AppliedMethod from a peft LoRA directory

Importing this package registers every delta family (one module per family).
"""

from peftrun.methods import adapter, lora, prefix, soft_prompt  # noqa: F401  (registration side effect)
from peftrun.methods.applied import AppliedMethod, apply_method, load_method
from peftrun.methods.base import DELTAS, Delta, register_delta
from peftrun.methods.peft_format import load_peft
from peftrun.methods.validate import validate_method

__all__ = [
    "DELTAS",
    "AppliedMethod",
    "Delta",
    "apply_method",
    "load_method",
    "load_peft",
    "register_delta",
    "validate_method",
]
