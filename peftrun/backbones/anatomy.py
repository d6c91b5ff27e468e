"""Anatomy: where each *role* of a transformer lives in a given `transformers` model.

Deltas speak only in roles (q, k, v, o, ffn_in, ffn_out, ...); this module is the single place that
maps roles to module paths; each family module (peftrun/backbones/families/) declares one `Anatomy`.

Paths are dotted attribute paths. `StackRoles.layers` is relative to the model root (the object
returned by `AutoModelFor...`), every other path in a stack is relative to one layer of that stack.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: importing the anatomy (config validation) does not import torch
    from torch import nn

ATTENTION_ROLES = ("q", "k", "v", "o")
FFN_ROLES = ("ffn_in", "ffn_gate", "ffn_out")
ALL_ROLES = ATTENTION_ROLES + FFN_ROLES


@dataclass(frozen=True)
class AttentionRoles:
    """One attention sublayer of a layer.

    kind: "self" or "cross".
    module: the attention module itself (its forward receives the sublayer input, already layer-normed
        for pre-LN families; its first output is the sublayer output before dropout/residual).
    q, k, v: separate projections, or None when the family fuses them in `qkv`.
    qkv: fused projection (GPT-2's Conv1D `c_attn`, output = [q; k; v] along the last dim), or None.
    o: output projection; its output is the attention sublayer's output before the residual.
    """

    kind: str
    module: str
    o: str
    q: str | None = None
    k: str | None = None
    v: str | None = None
    qkv: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("self", "cross"):
            raise ValueError(f"attention kind must be 'self' or 'cross', got {self.kind!r}")
        separate = (self.q, self.k, self.v)
        if self.qkv is None and None in separate:
            raise ValueError("an attention needs q, k and v paths, or a fused qkv path")
        if self.qkv is not None and any(p is not None for p in separate):
            raise ValueError("give either q/k/v or qkv, not both")


@dataclass(frozen=True)
class StackRoles:
    """A stack of identical layers (an encoder or a decoder).

    name: "encoder" or "decoder" (a decoder-only model has one stack named "decoder").
    layers: path from the model root to the nn.ModuleList of layers.
    attentions: the layer's attention sublayers, in forward order.
    ffn_in / ffn_out: the FFN's first and last projection; ffn_in's input is the FFN sublayer input,
        ffn_out's output is the FFN sublayer output before the residual.
    ffn_gate: the gate projection of a gated FFN (Llama: down(act(gate(x)) * up(x)), ffn_in = up), or None.
    causal: whether self-attention in this stack is causal.
    """

    name: str
    layers: str
    attentions: tuple[AttentionRoles, ...]
    ffn_in: str
    ffn_out: str
    causal: bool
    ffn_gate: str | None = None


@dataclass(frozen=True)
class Anatomy:
    """Roles of one backbone family (see module docstring).

    family: a registered family name (peftrun/backbones/families/).
    kind: "decoder" (decoder-only LM), "encoder-decoder" (seq2seq LM) or "encoder" (BERT-style).
    stacks: the model's stacks, encoder first.
    input_embeddings / lm_head: paths from the model root (lm_head None for encoders without one).
    conv1d_projections: True when projections are transformers' Conv1D (weight is [in, out]),
        the quirk of GPT-2; LoRA and merging must transpose for them.
    heads: paths (from the model root) of the task-head modules outside the base model: ("lm_head",),
        ("classifier",), ("score",), ("cls",) ...; what a `train=head` rule trains. An LM head may be
        tied to `input_embeddings`. Filled per loaded model by `family.anatomy_of`.
    biases: whether the projections and norms have bias terms (False: T5, Llama; BitFit has nothing to train).
    rotary: path (from the model root) of the rotary position module, whose `position_ids` a prefix shifts;
        None for learned absolute tables (found by `prefix.absolute_position_table`) and relative positions.
    """

    family: str
    kind: str
    stacks: tuple[StackRoles, ...]
    input_embeddings: str
    lm_head: str | None
    conv1d_projections: bool = False
    notes: str = field(default="", compare=False)
    heads: tuple[str, ...] = ()  # added by the backbone layer (additive; see docstring)
    biases: bool = True
    rotary: str | None = None

    @property
    def is_encoder_decoder(self) -> bool:
        return self.kind == "encoder-decoder"

    def stack(self, name: str) -> StackRoles:
        for stack in self.stacks:
            if stack.name == name:
                return stack
        raise KeyError(f"{self.family} has no {name!r} stack (has: {[s.name for s in self.stacks]})")

    def layers(self, model: nn.Module, stack: str) -> nn.ModuleList:
        return get_module(model, self.stack(stack).layers)

    def iter_layers(self, model: nn.Module) -> Iterator[tuple[StackRoles, int, nn.Module]]:
        """Yield (stack, layer index, layer module) over all stacks, encoder first."""
        for stack in self.stacks:
            for index, layer in enumerate(get_module(model, stack.layers)):
                yield stack, index, layer


def get_module(root: nn.Module, path: str) -> nn.Module:
    """Resolve a dotted path (numeric parts index ModuleLists); a clear error names the bad part."""
    module = root
    for part in path.split("."):
        try:
            module = module[int(part)] if part.isdigit() else getattr(module, part)
        except (AttributeError, IndexError) as err:
            raise KeyError(f"no module {path!r} in {type(root).__name__} (failed at {part!r})") from err
    return module
