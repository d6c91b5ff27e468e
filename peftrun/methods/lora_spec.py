"""LoRA's options and traits (torch-free; the delta is peftrun/methods/lora.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

from peftrun.methods.spec import ATTENTION_KINDS, DeltaSpec, register_spec


@register_spec("lora")
@dataclass
class LoRASpec(DeltaSpec):
    mergeable = True  # W0 + (alpha / r) B A folds into the weight
    peft_type = "LORA"

    rank: int = 4  # r; the LoRA paper's GPT-2 E2E setting
    alpha: float = 32.0  # scaling = alpha / rank
    dropout: float = 0.0  # dropout on the LoRA branch input x (not on the frozen path)
    targets: list[str] = field(default_factory=lambda: ["q", "v"])  # roles: q k v o ffn_in ffn_out | qkv
    layers: list[int] | None = None  # layer indices per stack (negative = from the end); null = all
    stacks: list[str] | None = None  # encoder / decoder; null = all stacks
    attention: list[str] = field(default_factory=lambda: list(ATTENTION_KINDS))  # self / cross
