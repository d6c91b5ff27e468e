"""A method applied to one model: deltas attached, trainability set, accounting, save / load / merge / export.

The deltas live in `model.peftrun_deltas` (an nn.ModuleDict), so `.to()`, the optimizer (model.parameters())
and state dicts see them. A method checkpoint (`save`) is a directory with

    adapter_model.safetensors   "deltas.<name>.<tensor>" for each delta's saved tensors and
                                "backbone.<param name>" for each trainable backbone tensor
                                (train=all: the whole model; bias/top_k/head: those tensors only)
    adapter_config.json         {"format": "peftrun", "peftrun_version", "family", "method": <resolved config>}

written atomically file by file (peftrun/io.py), weights first, so a complete
adapter_config.json marks a complete checkpoint. `load_method` rebuilds the method on a fresh base model
from that directory (or from a peft LoRA directory, recognised by its "peft_type").
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from peftrun.backbones.anatomy import Anatomy
from peftrun.errors import PeftrunError
from peftrun.methods.accounting import param_report
from peftrun.methods.base import Delta
from peftrun.methods.files import CONFIG_NAME, WEIGHTS_NAME, write_json_atomic, write_safetensors_atomic
from peftrun.methods.trainable import head_parameter_names, set_trainable, trainable_backbone_names
from peftrun.methods.validate import DeltaItem, method_to_dict, validate_method

DELTAS_ATTR = "peftrun_deltas"
FORMAT = "peftrun"


def peftrun_version() -> str:
    from peftrun import __version__

    return __version__


class AppliedMethod:
    """Handle on a method attached to `model` (see module docstring)."""

    def __init__(
        self, model: nn.Module, anatomy: Anatomy, method: dict[str, Any], backbone_trainable: set[str]
    ) -> None:
        self.model = model
        self.anatomy = anatomy
        self.method = method  # resolved method config (plain dict)
        self.backbone_trainable = backbone_trainable  # names of trainable backbone parameters

    @property
    def deltas(self) -> nn.ModuleDict:
        return getattr(self.model, DELTAS_ATTR)

    # --- accounting -----------------------------------------------------------------------------------------

    def backbone_state(self) -> dict[str, torch.Tensor]:
        """The trainable backbone tensors a save holds (tied tensors once, under their first name)."""
        params = dict(self.model.named_parameters())
        return {name: params[name] for name in sorted(self.backbone_trainable) if name in params}

    def param_report(self) -> dict[str, Any]:
        saved = sum(t.numel() for t in self.backbone_state().values())
        return param_report(self.model, dict(self.deltas.items()), saved)

    # --- save / load ----------------------------------------------------------------------------------------

    def state_to_save(self) -> dict[str, torch.Tensor]:
        tensors = {f"backbone.{k}": v for k, v in self.backbone_state().items()}
        for name, delta in self.deltas.items():
            tensors.update({f"deltas.{name}.{k}": v for k, v in delta.saved_state_dict().items()})
        return tensors

    def save(self, directory: str | os.PathLike) -> Path:
        """Write adapter_model.safetensors + adapter_config.json into `directory` (atomically, file by file)."""
        directory = Path(directory)
        write_safetensors_atomic(directory / WEIGHTS_NAME, self.state_to_save())
        write_json_atomic(directory / CONFIG_NAME, {
            "format": FORMAT,
            "peftrun_version": peftrun_version(),
            "family": self.anatomy.family,
            "method": self.method,
            "backbone_tensors": sorted(self.backbone_state()),
        })
        return directory

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        """Load tensors written by `save` (strict: a missing or unexpected key is an error)."""
        expected = set(self.state_to_save())
        missing, unexpected = expected - set(tensors), set(tensors) - expected
        if missing or unexpected:
            raise PeftrunError(
                f"method checkpoint does not match the method: missing {sorted(missing)[:5]}, unexpected "
                f"{sorted(unexpected)[:5]}; load it with the backbone and method it was saved from"
            )
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for name in self.backbone_state():
                params[name].copy_(tensors[f"backbone.{name}"])
        for name, delta in self.deltas.items():
            prefix = f"deltas.{name}."
            delta.load_saved_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})

    # --- merge / export -------------------------------------------------------------------------------------

    @property
    def mergeable(self) -> bool:
        """Every delta can be folded into the weights (LoRA): evaluation then runs at the base model's cost."""
        return bool(self.deltas) and all(d.mergeable for d in self.deltas.values())

    def _mergeable(self) -> list[Delta]:
        others = [name for name, d in self.deltas.items() if not d.mergeable]
        if others:
            raise PeftrunError(
                f"deltas {others} cannot be merged into the backbone weights (only LoRA can); "
                "use save() and load_method() instead"
            )
        return list(self.deltas.values())

    def merge(self) -> None:
        """Fold every LoRA update into its weight (no added latency); the hooks then add nothing."""
        for delta in self._mergeable():
            delta.merge(self.model)

    def unmerge(self) -> None:
        """Subtract the folded updates again (original weights up to float rounding)."""
        for delta in self._mergeable():
            delta.unmerge(self.model)

    def export_merged(self, directory: str | os.PathLike) -> Path:
        """`model.save_pretrained(directory)` of the merged model without deltas (a plain transformers model).

        The in-memory model is left as it was: the merged state dict is computed, saved, then unmerged.
        """
        deltas = self._mergeable()
        was_merged = [getattr(d, "merged", False) for d in deltas]
        self.merge()
        try:
            state = {k: v for k, v in self.model.state_dict().items() if not k.startswith(DELTAS_ATTR + ".")}
            self.model.save_pretrained(str(directory), state_dict=state)
        finally:
            for delta, merged in zip(deltas, was_merged, strict=True):
                if not merged:
                    delta.unmerge(self.model)
        return Path(directory)

    def remove(self) -> None:
        """Detach every delta and delete `model.peftrun_deltas` (the model is the base model again)."""
        for delta in self.deltas.values():
            delta.detach(self.model)
        delattr(self.model, DELTAS_ATTR)


def attach_deltas(model: nn.Module, items: list[DeltaItem], deltas: list[Delta]) -> None:
    """Attach built deltas and register them as `model.peftrun_deltas`."""
    if hasattr(model, DELTAS_ATTR):
        raise PeftrunError("this model already has a peftrun method applied; load a fresh backbone")
    container = nn.ModuleDict()
    try:
        for item, delta in zip(items, deltas, strict=True):
            container[item.name] = delta
            delta.attach(model)
    except BaseException:
        for delta in container.values():  # leave the model without half a method (hooks removed)
            delta.detach(model)
        raise
    model.add_module(DELTAS_ATTR, container)


def apply_method(
    model: nn.Module, anatomy: Anatomy, method_cfg: Any, tokenizer: Any = None, train_head: bool = False
) -> AppliedMethod:
    """Validate, set backbone trainability by `method_cfg.train`, build + attach the deltas (trainable).

    tokenizer: the backbone's, given (`set_tokenizer`) before they are built to deltas whose spec says
        `needs_tokenizer` (prompt tuning's init=text, P-tuning's anchors).
    train_head: also train the parameters outside the base model whatever the rule (a new task head, e.g. a
        classifier on a pretrained encoder); they are saved with the method.
    """
    items = validate_method(method_cfg, anatomy)
    method = method_to_dict(method_cfg)
    names = trainable_backbone_names(model, anatomy, method["train"], method["top_k"])
    if method["train"] in ("head", "bias", "top_k") and not names:
        raise PeftrunError(
            f"method.train={method['train']} selects no parameter of this {anatomy.family} model "
            f"({type(model).__name__}: e.g. T5 has no biases, a tied LM head is not a separate head); pick another rule"
        )
    if train_head:
        names = names | head_parameter_names(model, anatomy)
    set_trainable(model, names)
    deltas = [item.cls(item.spec, anatomy) for item in items]
    if tokenizer is not None:
        for delta in deltas:
            if delta.spec_class.needs_tokenizer:
                delta.set_tokenizer(tokenizer)
    attach_deltas(model, items, deltas)
    return AppliedMethod(model, anatomy, method, names)


def rewrites_inputs(model: nn.Module) -> bool:
    """True if an attached delta rewrites the forward's inputs (its spec's `rewrites_inputs`: soft prompts)."""
    deltas = getattr(model, DELTAS_ATTR, None)
    return deltas is not None and any(delta.spec_class.rewrites_inputs for delta in deltas.values())
