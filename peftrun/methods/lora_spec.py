"""LoRA's options and traits (torch-free; the delta is peftrun/methods/lora.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from peftrun.methods.spec import ATTENTION_KINDS, DeltaSpec, register_spec, selected_layers


@register_spec("lora")
@dataclass
class LoRASpec(DeltaSpec):
    mergeable = True  # W0 + (alpha / r) B A folds into the weight
    peft_type = "LORA"

    rank: int = 4  # r; the LoRA paper's GPT-2 E2E setting
    alpha: float = 32.0  # scaling = alpha / rank
    dropout: float = 0.0  # dropout on the LoRA branch input x (not on the frozen path)
    targets: list[str] = field(default_factory=lambda: ["q", "v"])  # roles: q k v o ffn_in ffn_gate ffn_out | qkv
    layers: list[int] | None = None  # layer indices per stack (negative = from the end); null = all
    stacks: list[str] | None = None  # encoder / decoder; null = all stacks
    attention: list[str] = field(default_factory=lambda: list(ATTENTION_KINDS))  # self / cross

    def parameter_count(self, anatomy: Any, shape: Any) -> int:
        """r (d_in + d_out) per site; a q/k/v slice of a fused qkv counts as its own projection."""
        total = 0
        for stack in anatomy.stacks:
            if self.stacks is not None and stack.name not in self.stacks:
                continue
            sizes = shape.stacks[stack.name]
            d, inner, kv = shape.hidden, sizes.heads * sizes.head_dim, sizes.kv_heads * sizes.head_dim  # kv < inner: GQA
            dims = {"q": (d, inner), "k": (d, kv), "v": (d, kv), "o": (inner, d), "qkv": (d, inner + 2 * kv),
                    "ffn_in": (d, sizes.ffn), "ffn_gate": (d, sizes.ffn), "ffn_out": (sizes.ffn, d)}
            per_layer = 0
            for role in self.targets:
                if role.startswith("ffn"):
                    per_layer += sum(dims[role]) if role != "ffn_gate" or stack.ffn_gate else 0
                    continue
                for attention in stack.attentions:
                    present = getattr(attention, role, None) or (role in "qkv" and attention.qkv is not None)
                    if attention.kind in self.attention and present:
                        per_layer += sum(dims[role])
            total += self.rank * per_layer * len(selected_layers(sizes.layers, self.layers))
        return total
