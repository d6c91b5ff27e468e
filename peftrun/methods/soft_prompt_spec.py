"""Soft prompts' options and traits: prompt tuning and P-tuning (torch-free; the deltas are in
peftrun/methods/soft_prompt.py). Both insert rows into the input embeddings and need the tokenizer (prompt
tuning for init=text, P-tuning for anchor text)."""

from __future__ import annotations

from dataclasses import dataclass

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
