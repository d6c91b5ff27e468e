"""Backbone families: one `Anatomy` + how to build each head, registered once in `FAMILIES`.

Each family's anatomy is written for its language-model class (what `load_backbone(head="lm")` returns:
GPT2LMHeadModel, BartForConditionalGeneration, T5ForConditionalGeneration, BertForMaskedLM), so
`anatomy_for(family)` needs no model. A loaded model of any head is served by `anatomy_of(model, family)`,
which re-roots the paths on that model's base model (`model.base_model`, e.g. `roberta.` instead of
`bert.`, `transformer.` for T5ForSequenceClassification) and checks that every role resolves.

Support is decided here, in one place: `Family.kinds` says what a family can be used as
("causal_lm" | "seq2seq_lm" | "masked_lm" | "classification" | "token"); callers ask `family.require(kind)`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from peftrun.backbones.anatomy import Anatomy, AttentionRoles, StackRoles, get_module
from peftrun.errors import PeftrunError

if TYPE_CHECKING:  # annotations only: importing the families (config validation) does not import torch
    from torch import nn

LM_KIND = {"decoder": "causal_lm", "encoder-decoder": "seq2seq_lm", "encoder": "masked_lm"}
HEADS = ("lm", "classification", "token", "base")  # `load_backbone(head=...)`; "base" = AutoModel, no head


@dataclass(frozen=True)
class StackShape:
    """Sizes of one stack: `layers` layers of `heads` attention heads of width `head_dim`, FFN width `ffn`."""

    layers: int
    heads: int
    head_dim: int
    ffn: int


@dataclass(frozen=True)
class Shape:
    """Sizes of a model: residual width `hidden`, vocabulary, and each stack's sizes by stack name."""

    hidden: int
    vocab: int
    stacks: dict[str, StackShape]


@dataclass(frozen=True)
class Family:
    """One backbone family.

    anatomy: roles, rooted at the family's LM class (see module docstring).
    base_prefix: attribute of that LM class holding the base model ("" when the LM class is its own base, as T5).
    heads: head name -> transformers Auto class name (lazily imported); "lm" always present.
    model_types: `config.model_type` values this family serves (bert also serves roberta).
    shape: config -> Shape (hidden size, head counts, ...) for deltas that size themselves by the model.
    """

    name: str
    anatomy: Anatomy
    base_prefix: str
    heads: dict[str, str]
    model_types: tuple[str, ...]
    shape: Callable[[Any], Shape] = field(compare=False)

    @property
    def kinds(self) -> frozenset[str]:
        """What the family can be used as: its LM kind plus the classification heads it has."""
        extra = {head for head in self.heads if head not in ("lm", "base")}
        return frozenset({LM_KIND[self.anatomy.kind], *extra})

    @property
    def lm_kind(self) -> str:
        return LM_KIND[self.anatomy.kind]

    def require(self, kind: str) -> None:
        """Raise a PeftrunError when this family cannot be used as `kind` (e.g. seq2seq_lm on bert)."""
        if kind not in self.kinds:
            usable = sorted(f.name for f in FAMILIES.values() if kind in f.kinds)
            raise PeftrunError(
                f"backbone family {self.name!r} cannot be used as {kind} "
                f"(it supports: {', '.join(sorted(self.kinds))});"
                f" pick a backbone of family {' / '.join(usable) or '(none)'}"
            )

    def auto_class_name(self, head: str) -> str:
        if head not in HEADS:
            raise PeftrunError(f"unknown head {head!r}; known: {', '.join(HEADS)}")
        if head not in self.heads:
            raise PeftrunError(
                f"backbone family {self.name!r} has no {head!r} head (it has: {', '.join(sorted(self.heads))})"
            )
        return self.heads[head]


FAMILIES: dict[str, Family] = {}


def register_family(
    anatomy: Anatomy,
    *,
    base_prefix: str,
    heads: dict[str, str],
    model_types: tuple[str, ...],
    shape: Callable[[Any], Shape],
) -> Family:
    """Register `anatomy.family` once (a second registration of a name is an error)."""
    if anatomy.family in FAMILIES:
        raise ValueError(f"backbone family {anatomy.family!r} registered twice")
    if "lm" not in heads:
        raise ValueError(f"backbone family {anatomy.family!r} needs an 'lm' head")
    family = Family(anatomy.family, anatomy, base_prefix, {"base": "AutoModel", **heads}, model_types, shape)
    FAMILIES[anatomy.family] = family
    return family


def get_family(name: str) -> Family:
    """The registered family `name`; an unknown name lists the known ones."""
    if name not in FAMILIES:
        raise PeftrunError(
            f"unknown backbone family {name!r}; known: {', '.join(sorted(FAMILIES))} (set backbone.family=<name>)"
        )
    return FAMILIES[name]


def anatomy_for(family: str) -> Anatomy:
    """The family's anatomy without loading a model (paths rooted at its LM class), for config validation."""
    return get_family(family).anatomy


def family_of_model_type(model_type: str) -> Family:
    """The family serving `config.model_type` (roberta -> bert)."""
    for family in FAMILIES.values():
        if model_type in family.model_types:
            return family
    known = sorted(t for f in FAMILIES.values() for t in f.model_types)
    raise PeftrunError(f"model_type {model_type!r} belongs to no backbone family; known: {', '.join(known)}")


# ---------------------------------------------------------------------------------------------- re-rooting


def base_prefix_of(model: nn.Module) -> str:
    """Path from `model` to its transformers base model ("" when the model is its own base)."""
    base = getattr(model, "base_model", model)
    if base is model:
        return ""
    prefix = getattr(model, "base_model_prefix", "")
    if prefix and getattr(model, prefix, None) is base:
        return prefix
    for name, module in model.named_children():
        if module is base:
            return name
    raise PeftrunError(f"cannot locate the base model inside {type(model).__name__}")


def _rebase(path: str, old: str, new: str) -> str:
    if old:
        if path != old and not path.startswith(old + "."):
            return path
        path = path[len(old):].lstrip(".")
    return f"{new}.{path}" if new and path else (new or path)


def _resolves(model: nn.Module, path: str) -> bool:
    try:
        get_module(model, path)
    except KeyError:
        return False
    return True


def _module_name(model: nn.Module, target: nn.Module | None) -> str | None:
    if target is None:
        return None
    for name, module in model.named_modules():
        if module is target:
            return name
    return None


def _head_paths(model: nn.Module, prefix: str, lm_head: str | None) -> tuple[str, ...]:
    """Top-level modules with parameters outside the base model (classifier, score, lm_head, cls...)."""
    if not prefix:
        return (lm_head,) if lm_head else ()
    return tuple(
        name for name, child in model.named_children()
        if name != prefix and any(True for _ in child.parameters())
    )


def anatomy_of(model: nn.Module, family: str) -> Anatomy:
    """The family's anatomy re-rooted on `model` (any head), with every role checked on every layer."""
    spec = get_family(family)
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type is not None and model_type not in spec.model_types:
        raise PeftrunError(
            f"backbone family {family!r} does not match the model's model_type {model_type!r} "
            f"(expected one of {', '.join(spec.model_types)}); "
            f"set backbone.family={family_of_model_type(model_type).name}"
        )
    prefix = base_prefix_of(model)
    old = spec.base_prefix
    stacks = tuple(replace(stack, layers=_rebase(stack.layers, old, prefix)) for stack in spec.anatomy.stacks)
    kind = spec.anatomy.kind
    if spec.anatomy.is_encoder_decoder and not _resolves(model, stacks[-1].layers):
        # Encoder-only heads of an encoder-decoder family (T5ForTokenClassification, T5EncoderModel).
        stacks, kind = stacks[:-1], "encoder"
    get_output = getattr(model, "get_output_embeddings", None)
    lm_head = _module_name(model, get_output()) if get_output is not None else None
    anatomy = replace(
        spec.anatomy,
        kind=kind,
        stacks=stacks,
        input_embeddings=_module_name(model, model.get_input_embeddings()) or _rebase(spec.anatomy.input_embeddings,
                                                                                     old, prefix),
        lm_head=lm_head,
        heads=_head_paths(model, prefix, lm_head),
    )
    check_anatomy(model, anatomy)
    return anatomy


def check_anatomy(model: nn.Module, anatomy: Anatomy) -> None:
    """Every role path of every layer resolves (PeftrunError naming the first one that does not)."""
    for stack in anatomy.stacks:
        try:
            layers = get_module(model, stack.layers)
        except KeyError as err:
            raise PeftrunError(f"{anatomy.family} anatomy does not fit {type(model).__name__}: {err}") from err
        for index, layer in enumerate(layers):
            paths = [stack.ffn_in, stack.ffn_out]
            for attention in stack.attentions:
                paths += [p for p in (attention.module, attention.o, attention.q, attention.k, attention.v,
                                      attention.qkv) if p is not None]
            for path in paths:
                try:
                    get_module(layer, path)
                except KeyError as err:
                    raise PeftrunError(
                        f"{anatomy.family} anatomy does not fit {type(model).__name__}: {stack.name} layer {index} "
                        f"has no {path!r} (a variant this family entry does not describe, e.g. gated T5 FFN)"
                    ) from err


# ---------------------------------------------------------------------------------------------- the families


def _gpt2_shape(c: Any) -> Shape:
    ffn = c.n_inner if c.n_inner is not None else 4 * c.n_embd
    return Shape(c.n_embd, c.vocab_size, {"decoder": StackShape(c.n_layer, c.n_head, c.n_embd // c.n_head, ffn)})


def _bart_shape(c: Any) -> Shape:
    return Shape(c.d_model, c.vocab_size, {
        "encoder": StackShape(c.encoder_layers, c.encoder_attention_heads, c.d_model // c.encoder_attention_heads,
                              c.encoder_ffn_dim),
        "decoder": StackShape(c.decoder_layers, c.decoder_attention_heads, c.d_model // c.decoder_attention_heads,
                              c.decoder_ffn_dim),
    })


def _t5_shape(c: Any) -> Shape:
    return Shape(c.d_model, c.vocab_size, {
        "encoder": StackShape(c.num_layers, c.num_heads, c.d_kv, c.d_ff),
        "decoder": StackShape(c.num_decoder_layers, c.num_heads, c.d_kv, c.d_ff),
    })


def _bert_shape(c: Any) -> Shape:
    stack = StackShape(c.num_hidden_layers, c.num_attention_heads, c.hidden_size // c.num_attention_heads,
                       c.intermediate_size)
    return Shape(c.hidden_size, c.vocab_size, {"encoder": stack})


GPT2 = register_family(
    Anatomy(
        family="gpt2",
        kind="decoder",
        stacks=(
            StackRoles(
                name="decoder", layers="transformer.h", causal=True,
                attentions=(AttentionRoles(kind="self", module="attn", qkv="attn.c_attn", o="attn.c_proj"),),
                ffn_in="mlp.c_fc", ffn_out="mlp.c_proj",
            ),
        ),
        input_embeddings="transformer.wte",
        lm_head="lm_head",
        conv1d_projections=True,
        heads=("lm_head",),
        notes="pre-LN; c_attn is a Conv1D whose output is [q; k; v] (3 x hidden); attn applies c_proj and "
              "resid_dropout inside; lm_head is tied to wte",
    ),
    base_prefix="transformer",
    heads={"lm": "AutoModelForCausalLM", "classification": "AutoModelForSequenceClassification",
           "token": "AutoModelForTokenClassification"},
    model_types=("gpt2",),
    shape=_gpt2_shape,
)

def _attention(kind: str, module: str, q: str, k: str, v: str, o: str) -> AttentionRoles:
    """An attention whose four projections are children of `module` (BART, T5)."""
    return AttentionRoles(kind=kind, module=module, q=f"{module}.{q}", k=f"{module}.{k}", v=f"{module}.{v}",
                          o=f"{module}.{o}")


_BART_SELF = _attention("self", "self_attn", "q_proj", "k_proj", "v_proj", "out_proj")
BART = register_family(
    Anatomy(
        family="bart",
        kind="encoder-decoder",
        stacks=(
            StackRoles(name="encoder", layers="model.encoder.layers", causal=False, attentions=(_BART_SELF,),
                       ffn_in="fc1", ffn_out="fc2"),
            StackRoles(
                name="decoder", layers="model.decoder.layers", causal=True,
                attentions=(
                    _BART_SELF,
                    _attention("cross", "encoder_attn", "q_proj", "k_proj", "v_proj", "out_proj"),
                ),
                ffn_in="fc1", ffn_out="fc2",
            ),
        ),
        input_embeddings="model.shared",
        lm_head="lm_head",
        heads=("lm_head",),
        notes="post-LN; the layer applies dropout + residual + LayerNorm after each attention and after fc2; "
              "encoder, decoder and lm_head share model.shared",
    ),
    base_prefix="model",
    heads={"lm": "AutoModelForSeq2SeqLM", "classification": "AutoModelForSequenceClassification"},
    model_types=("bart",),
    shape=_bart_shape,
)

T5 = register_family(
    Anatomy(
        family="t5",
        kind="encoder-decoder",
        stacks=(
            StackRoles(
                name="encoder", layers="encoder.block", causal=False,
                attentions=(_attention("self", "layer.0.SelfAttention", "q", "k", "v", "o"),),
                ffn_in="layer.1.DenseReluDense.wi", ffn_out="layer.1.DenseReluDense.wo",
            ),
            StackRoles(
                name="decoder", layers="decoder.block", causal=True,
                attentions=(
                    _attention("self", "layer.0.SelfAttention", "q", "k", "v", "o"),
                    _attention("cross", "layer.1.EncDecAttention", "q", "k", "v", "o"),
                ),
                ffn_in="layer.2.DenseReluDense.wi", ffn_out="layer.2.DenseReluDense.wo",
            ),
        ),
        input_embeddings="shared",
        lm_head="lm_head",
        heads=("lm_head",),
        notes="pre-LN (RMS norm, no biases); inner attention width = heads x d_kv; relative position bias in "
              "the first layer of each stack; gated FFNs (wi_0/wi_1, T5 v1.1) are not described",
    ),
    base_prefix="",
    heads={"lm": "AutoModelForSeq2SeqLM", "classification": "AutoModelForSequenceClassification",
           "token": "AutoModelForTokenClassification"},
    model_types=("t5",),
    shape=_t5_shape,
)

BERT = register_family(
    Anatomy(
        family="bert",
        kind="encoder",
        stacks=(
            StackRoles(
                name="encoder", layers="bert.encoder.layer", causal=False,
                attentions=(AttentionRoles(kind="self", module="attention.self", q="attention.self.query",
                                           k="attention.self.key", v="attention.self.value",
                                           o="attention.output.dense"),),
                ffn_in="intermediate.dense", ffn_out="output.dense",
            ),
        ),
        input_embeddings="bert.embeddings.word_embeddings",
        lm_head="cls.predictions.decoder",
        heads=("cls",),
        notes="post-LN; the attention module (attention.self) returns the context BEFORE the o projection "
              "(attention.output.dense, followed by dropout + residual + LayerNorm); RoBERTa shares this entry "
              "with base prefix roberta.",
    ),
    base_prefix="bert",
    heads={"lm": "AutoModelForMaskedLM", "classification": "AutoModelForSequenceClassification",
           "token": "AutoModelForTokenClassification"},
    model_types=("bert", "roberta"),
    shape=_bert_shape,
)
