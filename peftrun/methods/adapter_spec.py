"""Bottleneck adapters' options (torch-free; the delta is peftrun/methods/adapter.py). No trait differs from
the defaults: no virtual positions, no input rewriting, not mergeable (a non-linearity), no peft layout."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from peftrun.methods.spec import ATTENTION_KINDS, DeltaSpec, register_spec, selected_layers


@register_spec("adapter")
@dataclass
class AdapterSpec(DeltaSpec):
    targets: list[str] = field(default_factory=lambda: ["attn", "ffn"])  # sublayers: attn | ffn
    insertion: str = "sequential"  # sequential (reads the sublayer output) | parallel (reads the sublayer input)
    bottleneck: int | None = 64  # m, the bottleneck width; when set it wins over reduction_factor
    reduction_factor: float | None = None  # m = hidden // reduction_factor when bottleneck is null
    composition: str = "add"  # add | scaled | gated
    scale: float = 1.0  # s of composition=scaled
    activation: str = "relu"  # relu | gelu | tanh | silu
    layer_norm: bool = False  # LayerNorm on the adapter input
    init: str = "houlsby"  # houlsby (small truncated normal) | lora (zero up-projection: identity at init)
    init_std: float = 1e-3  # std of init=houlsby
    dropout: float = 0.0  # dropout after the activation
    layers: list[int] | None = None  # layer indices per stack (negative = from the end); null = all
    stacks: list[str] | None = None  # encoder / decoder; null = all
    attention: list[str] = field(default_factory=lambda: list(ATTENTION_KINDS))  # attention kinds for "attn"

    def parameter_count(self, anatomy: Any, shape: Any) -> int:
        """Per sublayer (width d = hidden): down d m + m, up m d + d, LayerNorm 2 d, gate d + 1."""
        d = shape.hidden
        m = self.bottleneck if self.bottleneck is not None else max(1, int(d // self.reduction_factor))
        each = 2 * d * m + m + d + (2 * d if self.layer_norm else 0) + (d + 1 if self.composition == "gated" else 0)
        total = 0
        for stack in anatomy.stacks:
            if self.stacks is not None and stack.name not in self.stacks:
                continue
            sizes = shape.stacks[stack.name]
            per_layer = ("ffn" in self.targets) + ("attn" in self.targets) * sum(
                a.kind in self.attention for a in stack.attentions)
            total += each * per_layer * len(selected_layers(sizes.layers, self.layers))
        return total
