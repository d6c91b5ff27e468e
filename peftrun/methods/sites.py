"""Sites: the concrete places (stack, layer, attention kind, role) a delta attaches to.

A delta's spec names roles and a selection (layers, stacks, attention kinds); `select_sites` turns that
into module paths of one model through its `Anatomy`. The fused-qkv quirk (GPT-2's Conv1D `c_attn`,
output [q; k; v] along the last dim) is handled here once: role q/k/v on such a family is a *slice*
(`Site.part` = 0/1/2) of the fused projection, role `qkv` is the whole fused projection.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from peftrun.backbones.anatomy import Anatomy, AttentionRoles, StackRoles, get_module
from peftrun.errors import PeftrunError
from peftrun.methods.spec import ATTENTION_KINDS  # torch-free home; re-exported for the delta modules

PROJECTION_ROLES = ("q", "k", "v", "o", "ffn_in", "ffn_gate", "ffn_out", "qkv")
FFN_PROJECTION_ROLES = ("ffn_in", "ffn_gate", "ffn_out")  # ffn_gate: the gate of a gated FFN (Llama), if any
QKV_PARTS = {"q": 0, "k": 1, "v": 2}


@dataclass(frozen=True)
class Site:
    """One attachment point.

    path: module path from the model root (e.g. "transformer.h.3.attn.c_attn").
    attention: "self"/"cross" for attention roles, None for FFN roles.
    part: for q/k/v on a fused qkv projection, the slice index (0, 1, 2) of the fused output; else None.
    """

    stack: str
    layer: int
    role: str
    path: str
    attention: str | None = None
    part: int | None = None

    @property
    def key(self) -> str:
        """Stable identifier without dots (usable as an nn.ModuleDict key), e.g. "decoder_3_self_q"."""
        return f"{self.stack}_{self.layer}_{self.attention or 'ffn'}_{self.role}"


def attention_role_path(attention: AttentionRoles, role: str) -> tuple[str, int | None] | None:
    """Path (relative to a layer) and fused slice of `role` in one attention sublayer; None if absent."""
    if role == "o":
        return attention.o, None
    if role == "qkv":
        return (attention.qkv, None) if attention.qkv is not None else None
    if attention.qkv is not None:
        return attention.qkv, QKV_PARTS[role]
    return getattr(attention, role), None


def check_roles(anatomy: Anatomy, roles: Sequence[str], allowed_roles: Sequence[str]) -> str | None:
    """Reason the projection `roles` cannot apply to `anatomy`, else None."""
    if not roles:
        return f"targets is empty (allowed: {', '.join(allowed_roles)}); fix: e.g. targets=[{allowed_roles[0]}]"
    for role in roles:
        if role not in allowed_roles:
            return f"targets has unknown role {role!r} (allowed: {', '.join(allowed_roles)})"
    fused = any(a.qkv is not None for s in anatomy.stacks for a in s.attentions)
    if "qkv" in roles and not fused:
        return (
            f"role 'qkv' is a fused q/k/v projection (GPT-2's c_attn), but {anatomy.family} has separate "
            "q, k, v projections; fix: targets=[q, k, v]"
        )
    if "qkv" in roles and any(r in QKV_PARTS for r in roles):
        return "targets has both 'qkv' (the whole fused projection) and q/k/v slices of it; pick one"
    if "ffn_gate" in roles and not any(s.ffn_gate is not None for s in anatomy.stacks):
        return (f"role 'ffn_gate' is the gate projection of a gated FFN, but {anatomy.family}'s FFN is not gated; "
                "fix: targets=[ffn_in, ffn_out]")
    return None


def check_selection(
    anatomy: Anatomy,
    stacks: Sequence[str] | None,
    attention: Sequence[str],
    layers: Sequence[int] | None,
    uses_attention: bool,
) -> str | None:
    """Reason a (stacks, attention kinds, layers) selection cannot apply to `anatomy`, else None.

    Layer indices are range-checked later, when the model (hence the layer count) exists.
    """
    stack_names = [s.name for s in anatomy.stacks]
    for name in stacks or ():
        if name not in stack_names:
            return f"stacks has {name!r}, but {anatomy.family} has stacks {stack_names}"
    for kind in attention:
        if kind not in ATTENTION_KINDS:
            return f"attention has {kind!r} (allowed: {', '.join(ATTENTION_KINDS)})"
    for index in layers or ():
        if not isinstance(index, int):
            return f"layers has {index!r}; layer indices are integers (negative counts from the last layer)"
    chosen = [s for s in anatomy.stacks if stacks is None or s.name in stacks]
    if uses_attention and not any(a.kind in attention for s in chosen for a in s.attentions):
        kinds = sorted({a.kind for s in chosen for a in s.attentions})
        return f"attention={list(attention)} selects no attention sublayer of {anatomy.family} (it has {kinds})"
    return None


def resolve_layers(stack: StackRoles, count: int, layers: Sequence[int] | None) -> list[int]:
    """Layer indices of one stack selected by `layers` (None = all; negatives count from the end)."""
    if layers is None:
        return list(range(count))
    chosen = []
    for index in layers:
        if not -count <= index < count:
            raise PeftrunError(
                f"method layers={list(layers)}: layer {index} does not exist in the {stack.name} stack "
                f"({count} layers, indices 0..{count - 1} or -{count}..-1); fix the method's `layers`"
            )
        chosen.append(index % count)
    return sorted(set(chosen))


def select_sites(
    model: nn.Module,
    anatomy: Anatomy,
    roles: Sequence[str],
    stacks: Sequence[str] | None = None,
    attention: Sequence[str] = ATTENTION_KINDS,
    layers: Sequence[int] | None = None,
) -> list[Site]:
    """All sites of `model` for projection roles (q, k, v, o, qkv, ffn_in, ffn_gate, ffn_out), in forward order."""
    sites = []
    for stack in anatomy.stacks:
        if stacks is not None and stack.name not in stacks:
            continue
        prefix = stack.layers
        for index in resolve_layers(stack, len(get_module(model, prefix)), layers):
            for att in stack.attentions:
                if att.kind not in attention:
                    continue
                for role in roles:
                    if role in FFN_PROJECTION_ROLES:
                        continue
                    found = attention_role_path(att, role)
                    if found is not None:
                        rel, part = found
                        sites.append(Site(stack.name, index, role, f"{prefix}.{index}.{rel}", att.kind, part))
            for role in roles:
                if role in FFN_PROJECTION_ROLES and getattr(stack, role) is not None:
                    sites.append(Site(stack.name, index, role, f"{prefix}.{index}.{getattr(stack, role)}"))
    return sites


@dataclass(frozen=True)
class Sublayer:
    """One sublayer a hidden-side delta (adapter) wraps.

    kind: "attn" or "ffn"; attention: "self"/"cross" for kind attn.
    input_path: the module whose *input* is the sublayer input (q or the fused qkv; ffn_in).
    output_path: the module whose *output* is the sublayer output before the residual (o; ffn_out).
    """

    stack: str
    layer: int
    kind: str
    input_path: str
    output_path: str
    attention: str | None = None

    @property
    def key(self) -> str:
        return f"{self.stack}_{self.layer}_{self.attention + '_attn' if self.attention else 'ffn'}"


def select_sublayers(
    model: nn.Module,
    anatomy: Anatomy,
    kinds: Sequence[str],
    stacks: Sequence[str] | None = None,
    attention: Sequence[str] = ATTENTION_KINDS,
    layers: Sequence[int] | None = None,
) -> list[Sublayer]:
    """Attention ("attn") and FFN ("ffn") sublayers of `model` selected by kind/stack/attention kind/layer."""
    found = []
    for stack in anatomy.stacks:
        if stacks is not None and stack.name not in stacks:
            continue
        for index in resolve_layers(stack, len(get_module(model, stack.layers)), layers):
            prefix = f"{stack.layers}.{index}"
            if "attn" in kinds:
                for att in stack.attentions:
                    if att.kind in attention:
                        source = att.qkv if att.qkv is not None else att.q
                        found.append(Sublayer(stack.name, index, "attn", f"{prefix}.{source}", f"{prefix}.{att.o}",
                                              att.kind))
            if "ffn" in kinds:
                found.append(Sublayer(stack.name, index, "ffn", f"{prefix}.{stack.ffn_in}", f"{prefix}.{stack.ffn_out}"))
    return found


def projection_shape(module: nn.Module) -> tuple[int, int, bool]:
    """(in_features, out_features, transposed) of a projection; transposed for Conv1D (weight [in, out])."""
    from transformers.pytorch_utils import Conv1D

    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features, False
    if isinstance(module, Conv1D):
        return module.weight.shape[0], module.weight.shape[1], True
    raise PeftrunError(
        f"a delta targets a {type(module).__name__}, but only nn.Linear and transformers' Conv1D projections are "
        "supported; fix the family's anatomy (peftrun/backbones/families/) or the method's targets"
    )
