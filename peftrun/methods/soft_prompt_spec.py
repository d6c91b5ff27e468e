"""Soft prompts' options and traits: prompt tuning and P-tuning (torch-free; the deltas are in
peftrun/methods/soft_prompt.py). Both insert rows into the input embeddings and need the tokenizer (prompt
tuning for init=text, P-tuning for anchor text)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from peftrun.methods.spec import DeltaSpec, register_spec

PSEUDO_TOKEN = "[P]"


@register_spec("prompt_tuning")
@dataclass
class PromptTuningSpec(DeltaSpec):
    rewrites_inputs = True
    needs_tokenizer = True
    peft_type = "PROMPT_TUNING"

    length: int = 100  # n virtual tokens (Lester et al.: 100 for T5; 5-150 studied)
    init: str = "vocab"  # random | vocab | text (see soft_prompt.py's docstring)
    text: str | None = None  # init=text: e.g. the class labels "positive negative"
    sample_from: int | None = 5000  # init=vocab: draw ids below this (Lester et al.: top 5,000); null = whole vocab

    def virtual_positions(self, backbone_kind: str) -> int:
        return self.length

    def parameter_count(self, anatomy: Any, shape: Any) -> int:
        return self.length * shape.hidden


@register_spec("ptuning")
@dataclass
class PTuningSpec(DeltaSpec):
    rewrites_inputs = True
    needs_tokenizer = True
    peft_type = "P_TUNING"

    template: str = "[P][P][P] {x} [P][P][P] {y}"  # [P] pseudo token, {x} input, {y} target; other text = anchors
    encoder: str = "lstm"  # lstm | mlp | none (prompt encoder, see soft_prompt.py's docstring)
    mid_dim: int | None = None  # encoder width: LSTM hidden per direction (default d/2) or MLP hidden (default d)
    dropout: float = 0.0  # dropout between the LSTM layers

    def virtual_positions(self, backbone_kind: str) -> int:
        """The [P] pseudo tokens; anchor text is not counted (its length needs the tokenizer)."""
        return self.template.count(PSEUDO_TOKEN)

    def parameter_count(self, anatomy: Any, shape: Any) -> int:
        """n d for the table, plus the encoder: mlp (hidden h) d h + h + h h + h + h d + d; lstm (h per direction)
        two bidirectional layers 2 (4h (d + h) + 8h) + 2 (4h (2h + h) + 8h), then 2h 2h + 2h + 2h d + d."""
        n, d = self.template.count(PSEUDO_TOKEN), shape.hidden
        if self.encoder == "mlp":
            h = self.mid_dim or d
            return n * d + d * h + h + h * h + h + h * d + d
        if self.encoder == "lstm":
            h = self.mid_dim or d // 2
            lstm = 2 * (4 * h * (d + h) + 8 * h) + 2 * (4 * h * (2 * h + h) + 8 * h)
            return n * d + lstm + 2 * h * 2 * h + 2 * h + 2 * h * d + d
        return n * d
