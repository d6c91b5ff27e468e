"""Prefix-tuning's options and traits (torch-free; the delta is peftrun/methods/prefix.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from peftrun.methods.spec import ATTENTION_KINDS, DeltaSpec, register_spec, selected_layers


@register_spec("prefix")
@dataclass
class PrefixSpec(DeltaSpec):
    peft_type = "PREFIX_TUNING"

    length: int = 10  # P, prefix length (Li & Liang: 10 for table-to-text, 200 for summarization)
    mid_dim: int | None = 512  # reparameterisation MLP width (Li & Liang 512, He et al. 800); null = P-tuning v2
    dropout: float = 0.0  # dropout on the prefix keys/values while training (P-tuning v2: 0.1)
    composition: str = "concat"  # concat (Li & Liang) | gated | add (He et al.'s forms, see attention_hook)
    shift_positions: bool = True  # real tokens' absolute positions start at P (see prefix.py's docstring)
    stacks: list[str] | None = None  # encoder / decoder; null = every stack
    attention: list[str] = field(default_factory=lambda: list(ATTENTION_KINDS))  # self / cross
    layers: list[int] | None = None  # layer indices per stack (negative = from the end); null = all

    def virtual_positions(self, backbone_kind: str) -> int:
        """P when the real tokens' absolute positions start at P (never on an encoder-decoder)."""
        return self.length if self.shift_positions and backbone_kind != "encoder-decoder" else 0

    def parameter_count(self, anatomy: Any, shape: Any) -> int:
        """Per (stack, attention kind) with L layers of inner width d_in: L 2 P d_in (mid_dim null), else the MLP
        P d_in + d_in m + m + m (L 2 d_in) + L 2 d_in."""
        total = 0
        for stack in anatomy.stacks:
            if self.stacks is not None and stack.name not in self.stacks:
                continue
            sizes = shape.stacks[stack.name]
            d_in = sizes.kv_heads * sizes.head_dim  # keys/values per key-value head (GQA: fewer than query heads)
            out = len(selected_layers(sizes.layers, self.layers)) * 2 * d_in
            for attention in stack.attentions:
                if attention.kind not in self.attention or not out:
                    continue
                if self.mid_dim is None:
                    total += self.length * out
                else:
                    d, m = d_in, self.mid_dim  # E's width: d_in, as peft's token_dim
                    total += self.length * d + d * m + m + m * out + out
        return total
