"""What the rest of peftrun may ask of a delta family, answered without torch (pre-flight checks import none).

Each delta family has a spec dataclass (its YAML options) that subclasses `DeltaSpec` and registers with
`@register_spec(kind)` in a torch-free `<family>_spec.py` module next to the delta's module; the delta class
(`@register_delta(kind)`, torch) names it as its `spec_class`. Code outside `peftrun/methods/` asks the spec,
never a kind name:

    virtual_positions(backbone_kind)  positions the delta adds before or inside the input (input lengths)
    rewrites_inputs                   inserts rows into the input embeddings (generation passes through HF
                                      `generate`, whose cache handling the insertion relies on)
    needs_tokenizer                   gets the backbone's tokenizer before it is built (text init, anchors)
    mergeable                         can be folded into the backbone weights (evaluation at the base cost)
    peft_type                         peft's name for the same method (the PEFT layout export), or None
    parameter_count(anatomy, shape)   the closed form of its trainable parameters on a model of these sizes
                                      (`Family.shape(config)`), or None when it has none
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import fields
from typing import Any, ClassVar

from peftrun.errors import PeftrunError, first_line

ATTENTION_KINDS = ("self", "cross")  # attention sublayer kinds a delta can select


class DeltaSpec:
    """Base of every delta family's spec dataclass (see module docstring); class-level traits, no fields."""

    kind: ClassVar[str] = ""
    rewrites_inputs: ClassVar[bool] = False
    needs_tokenizer: ClassVar[bool] = False
    mergeable: ClassVar[bool] = False
    peft_type: ClassVar[str | None] = None

    def virtual_positions(self, backbone_kind: str) -> int:
        """Positions added to the input on a `backbone_kind` ("decoder" | "encoder" | "encoder-decoder")."""
        return 0

    def parameter_count(self, anatomy: Any, shape: Any) -> int | None:
        """Trainable parameters this delta adds to a model with roles `anatomy` and sizes `shape` (closed form,
        checked against the built delta by tests/test_contract.py); None = no closed form declared."""
        return None


def selected_layers(count: int, layers: list[int] | None) -> list[int]:
    """Indices of a stack's `count` layers a spec's `layers` selects (None = all; negatives from the end)."""
    if layers is None:
        return list(range(count))
    return sorted({index % count for index in layers if -count <= index < count})


SPECS: dict[str, type[DeltaSpec]] = {}


def register_spec(kind: str) -> Callable[[type[DeltaSpec]], type[DeltaSpec]]:
    """Class decorator: registers a spec dataclass under `kind` (the delta's `kind` in YAML); refuses duplicates."""

    def decorator(cls: type[DeltaSpec]) -> type[DeltaSpec]:
        if kind in SPECS:
            raise ValueError(f"delta spec {kind!r} registered twice")
        cls.kind = kind
        SPECS[kind] = cls
        return cls

    return decorator


def registered_specs() -> dict[str, type[DeltaSpec]]:
    """Every delta family's spec class by kind (imports the torch-free spec modules)."""
    from peftrun.methods import adapter_spec, lora_spec, prefix_spec, soft_prompt_spec  # noqa: F401

    return SPECS


def parse_spec(cls: type[DeltaSpec], options: Mapping[str, Any], where: str) -> Any:
    """Spec dataclass instance of `cls` from `options`; unknown keys and wrong types name the key."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    allowed = [f.name for f in fields(cls)]
    for key in options:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f"did you mean {close[0]!r}?" if close else "remove it"
            raise PeftrunError(
                f"{where}: unknown key {key!r} for a {cls.kind} delta (allowed: {', '.join(allowed)}); {hint}"
            )
    try:
        merged = OmegaConf.merge(OmegaConf.structured(cls), dict(options))
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or "?"
        value = options.get(key, "?") if isinstance(key, str) else "?"
        raise PeftrunError(
            f"{where}.{key}={value!r}: {first_line(err)}; fix the value's type (see {cls.__name__})"
        ) from err


def method_virtual_positions(method: Mapping[str, Any], backbone_kind: str) -> int:
    """Sum of the virtual positions of a resolved method's deltas. Items that do not parse count 0:
    `validate_method` reports them, with the same message, right after the length check."""
    specs = registered_specs()
    total = 0
    for index, item in enumerate(method.get("deltas") or []):
        if not isinstance(item, Mapping) or item.get("kind") not in specs:
            continue
        options = {k: v for k, v in item.items() if k not in ("kind", "name")}
        try:
            spec = parse_spec(specs[item["kind"]], options, f"method.deltas[{index}]")
        except PeftrunError:
            continue
        total += max(spec.virtual_positions(backbone_kind), 0)
    return total
