"""Deltas: small modules attached to a frozen backbone by *role* (never by module name).

A delta family registers once with `@register_delta("lora")`; the Hydra method YAMLs list deltas as
`{kind: lora, ...}` items whose keys are the fields of the family's spec dataclass (a torch-free
`peftrun.methods.spec.DeltaSpec` registered under the same kind, which also declares the family's traits).
A method = a list of deltas + a rule for which backbone parameters stay trainable (MethodConfig.train).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import nn

from peftrun.backbones.anatomy import Anatomy
from peftrun.methods.spec import DeltaSpec


class Delta(nn.Module, ABC):
    """One delta instance, attached to one model.

    Subclasses set `spec_class` (the family's registered DeltaSpec dataclass); `kind` is set by the registry.
    Its own parameters are the trained parameters; `saved_state_dict` is what a checkpoint holds
    (they differ for prefix-tuning: the reparameterization MLP trains but only its output is saved).
    The PEFT layout (peftrun.methods.peft_format) calls `to_peft` / `from_peft` of families whose spec names
    a `peft_type`.
    """

    kind: ClassVar[str] = ""
    spec_class: ClassVar[type[DeltaSpec]] = DeltaSpec

    def __init__(self, spec: Any, anatomy: Anatomy) -> None:
        super().__init__()
        self.spec = spec
        self.anatomy = anatomy

    @property
    def mergeable(self) -> bool:
        """Weight-side deltas (LoRA) can be folded into the backbone weights (declared by the spec)."""
        return self.spec_class.mergeable

    def set_tokenizer(self, tokenizer: Any) -> None:
        """The backbone's tokenizer, given before `attach` to families whose spec says `needs_tokenizer`."""
        self.tokenizer = tokenizer

    @classmethod
    def supports(cls, spec: Any, anatomy: Anatomy) -> str | None:
        """None if this spec can be applied to this anatomy, else the reason it cannot."""
        return None

    @abstractmethod
    def attach(self, model: nn.Module) -> None:
        """Install into `model` (wrap projections, register hooks ...). Output at init follows the paper."""

    @abstractmethod
    def detach(self, model: nn.Module) -> None:
        """Undo `attach`, leaving `model` exactly as before."""

    def saved_state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors a checkpoint holds; default: all of this delta's parameters."""
        return {name: p.detach() for name, p in self.named_parameters()}

    def load_saved_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.load_state_dict(state, strict=True)

    def per_role_counts(self) -> dict[str, int]:
        """Trainable parameter count per role (for the accounting); default: everything under "all"."""
        return {"all": sum(p.numel() for p in self.parameters())}

    def merge(self, model: nn.Module) -> None:
        """Fold this delta into `model`'s weights and stop applying it at run time (mergeable deltas only)."""
        raise NotImplementedError(f"{self.kind} deltas cannot be merged into the backbone weights")

    def unmerge(self, model: nn.Module) -> None:
        """Undo `merge` (subtracts the folded update; exact up to float rounding)."""
        raise NotImplementedError(f"{self.kind} deltas cannot be merged into the backbone weights")

    def to_peft(self, model: nn.Module) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """(peft config fields of this method, peft's tensors); PeftrunError naming what peft cannot express."""
        raise NotImplementedError(f"{self.kind} has no peft layout")

    @classmethod
    def from_peft(cls, config: dict[str, Any], tensors: dict[str, torch.Tensor], model: nn.Module,
                  anatomy: Anatomy) -> tuple[dict[str, Any], Any]:
        """(the delta item {kind, **spec} equivalent to a peft adapter, a function(delta) -> saved_state_dict
        for the attached delta); PeftrunError naming what peftrun cannot express."""
        raise NotImplementedError(f"{cls.kind} has no peft layout")


DELTAS: dict[str, type[Delta]] = {}


def register_delta(name: str) -> Callable[[type[Delta]], type[Delta]]:
    """Class decorator: registers a delta family under `name` (the `kind` in YAML); refuses duplicates and a
    spec_class that is not the spec registered under the same name."""

    def decorator(cls: type[Delta]) -> type[Delta]:
        if name in DELTAS:
            raise ValueError(f"delta {name!r} registered twice")
        if cls.spec_class.kind != name:
            raise ValueError(f"delta {name!r}: spec_class {cls.spec_class.__name__} is registered as "
                             f"{cls.spec_class.kind!r}; use @register_spec({name!r}) on it")
        cls.kind = name
        DELTAS[name] = cls
        return cls

    return decorator
