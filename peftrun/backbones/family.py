"""The backbone family registry: what one family module declares (`Family`) and how the rest of peftrun reads it.

A family is one module under peftrun/backbones/families/ (gpt2.py, bart.py, t5.py, bert.py, llama.py) that calls
`register_family` once with everything peftrun knows about it: its anatomy (roles, written for its LM class),
shapes (`Shape`, with key/value heads), heads (transformers Auto classes), the `config.model_type`s it serves,
its tokenizer conventions (`Specials`), its tiny offline config and its absolute position tables. Nothing
else in peftrun names a family: loading, tokenizers, tiny models, length checks and deltas read this registry.
Adding a family = one module imported in families/__init__.py, plus its YAMLs in conf/backbone/.

`anatomy_of(model, family)` re-roots the LM-class anatomy on a loaded model of any head (`model.base_model`,
e.g. `roberta.` instead of `bert.`, `transformer.` for T5ForSequenceClassification) and checks every role.

Support is decided here, in one place: `Family.kinds` says what a family can be used as
("causal_lm" | "seq2seq_lm" | "masked_lm" | "classification" | "token"); callers ask `family.require(kind)`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from peftrun.backbones.anatomy import Anatomy, get_module
from peftrun.errors import PeftrunError

if TYPE_CHECKING:  # annotations only: importing the families (config validation) does not import torch
    from torch import nn

    from peftrun.backbones.tokenizer import Specials

LM_KIND = {"decoder": "causal_lm", "encoder-decoder": "seq2seq_lm", "encoder": "masked_lm"}
HEADS = ("lm", "classification", "token", "base")  # `load_backbone(head=...)`; "base" = AutoModel, no head


@dataclass(frozen=True)
class StackShape:
    """Sizes of one stack: `layers` layers of `heads` query heads of width `head_dim`, FFN width `ffn`, and
    `kv_heads` key/value heads (= heads, or fewer with grouped-query attention: each serves heads // kv_heads)."""

    layers: int
    heads: int
    head_dim: int
    ffn: int
    kv_heads: int


@dataclass(frozen=True)
class Shape:
    """Sizes of a model: residual width `hidden`, vocabulary, and each stack's sizes by stack name."""

    hidden: int
    vocab: int
    stacks: dict[str, StackShape]


@dataclass(frozen=True)
class PositionTable:
    """A learned absolute position table: `config[key]` rows, `offset` of them unusable (RoBERTa's 2).
    A longer input indexes past it; families with relative or rotary positions declare none."""

    key: str
    offset: int = 0


@dataclass(frozen=True)
class Family:
    """One backbone family (see module docstring).

    anatomy: roles, rooted at the family's LM class.
    base_prefix: attribute of that LM class holding the base model ("" when the LM class is its own base, as T5).
    heads: head name -> transformers Auto class name (lazily imported); "lm" always present.
    model_types: `config.model_type` values this family serves (bert also serves roberta).
    shape: config -> Shape (hidden size, head counts, ...) for deltas that size themselves by the model.
    tokenizer_styles: model_type -> name of its special-token convention (a `Specials` in some family's `styles`).
    styles: the special-token conventions this family defines, by name.
    tiny: (model_type, config kwargs) of the family's tiny offline backbone, or None.
    positions: model_type -> its absolute position table; absent = no limit from positions.
    """

    name: str
    anatomy: Anatomy
    base_prefix: str
    heads: dict[str, str]
    model_types: tuple[str, ...]
    shape: Callable[[Any], Shape] = field(compare=False)
    tokenizer_styles: dict[str, str] = field(default_factory=dict)
    styles: dict[str, Specials] = field(default_factory=dict)
    tiny: tuple[str, dict[str, Any]] | None = None
    positions: dict[str, PositionTable] = field(default_factory=dict)

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
    tokenizer_styles: dict[str, str] | None = None,
    styles: dict[str, Specials] | None = None,
    tiny: tuple[str, dict[str, Any]] | None = None,
    positions: dict[str, PositionTable] | None = None,
) -> Family:
    """Register `anatomy.family` once (a second registration of a name, a model type or a style is an error)."""
    if anatomy.family in FAMILIES:
        raise ValueError(f"backbone family {anatomy.family!r} registered twice")
    if "lm" not in heads:
        raise ValueError(f"backbone family {anatomy.family!r} needs an 'lm' head")
    taken = {t for f in FAMILIES.values() for t in f.model_types} & set(model_types)
    if taken:
        raise ValueError(f"model types {sorted(taken)} already belong to another family")
    defined = {s for f in FAMILIES.values() for s in f.styles} & set(styles or {})
    if defined:
        raise ValueError(f"tokenizer styles {sorted(defined)} already defined by another family")
    if tiny is not None and tiny[0] not in model_types:
        raise ValueError(f"tiny model type {tiny[0]!r} is not one of {model_types}")
    family = Family(anatomy.family, anatomy, base_prefix, {"base": "AutoModel", **heads}, model_types, shape,
                    dict(tokenizer_styles or {}), dict(styles or {}), tiny, dict(positions or {}))
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


def style_name_of(model_type: str) -> str:
    """Name of the special-token convention of `config.model_type` (roberta -> "bart")."""
    for family in FAMILIES.values():
        if model_type in family.tokenizer_styles:
            return family.tokenizer_styles[model_type]
    known = sorted(t for f in FAMILIES.values() for t in f.tokenizer_styles)
    raise PeftrunError(f"no tokenizer convention for model_type {model_type!r}; known: {', '.join(known)}")


def style_named(name: str) -> Specials:
    """The special-token convention `name`, wherever a family defined it."""
    for family in FAMILIES.values():
        if name in family.styles:
            return family.styles[name]
    known = sorted(s for f in FAMILIES.values() for s in f.styles)
    raise PeftrunError(f"unknown tokenizer style {name!r}; known: {', '.join(known)}")


def position_table_of(model_type: str) -> PositionTable | None:
    """The absolute position table of `config.model_type`, or None (relative / rotary positions, or unknown)."""
    for family in FAMILIES.values():
        if model_type in family.positions:
            return family.positions[model_type]
    return None


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
        rotary=_rebase(spec.anatomy.rotary, old, prefix) if spec.anatomy.rotary else None,
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
            paths = [p for p in (stack.ffn_in, stack.ffn_gate, stack.ffn_out) if p is not None]
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
    if anatomy.rotary is not None and not _resolves(model, anatomy.rotary):
        raise PeftrunError(f"{anatomy.family} anatomy does not fit {type(model).__name__}: no {anatomy.rotary!r}")
