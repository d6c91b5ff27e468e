"""Prefix-tuning (Li & Liang 2021) and deep prompts (P-tuning v2, Liu et al. 2022): learned keys and values.

Every selected attention sublayer (GPT-2 / BERT self; BART / T5 encoder self, decoder self and cross) attends
over P learned key/value vectors before the real ones: an encoder-decoder reads [PREFIX; x] in the encoder
and [PREFIX'; y] in the decoder, and its cross attention [PREFIX''; enc(x)]. The prefix enters inside the
attention function (peftrun.methods.attention_hook), never the KV cache; padding stays masked and the prefix
is visible to every query.

Parameters, per group g = (stack, attention kind) with L_g selected layers and key/value width
d_in = kv_heads x head_dim (= heads x head_dim, except with grouped-query attention, e.g. Llama, where a prefix has
one key and value per key/value head, shared by its group of query heads, as peft's num_key_value_heads):
    mid_dim set (Li & Liang's reparameterisation, trained):  E_g (P, d_in) -> Linear(d_in, mid_dim) -> tanh
        -> Linear(mid_dim, L_g * 2 * d_in); row p, chunk 2l (+1) = layer l's key (value) of position p
        (the layout of Li & Liang's and peft's prefix encoders; E's width d_in is d_model in every multi-head
        family, and the key/value width under GQA, as peft's token_dim). Only the result is saved.
    mid_dim null (P-tuning v2): the prefix itself, a parameter (L_g, 2, P, d_in) ~ N(0, 1) (nn.Embedding's init,
        as P-tuning v2 and peft).
    saved: {g: (L_g, 2, P, d_in)} either way, e.g. P-tuning v2 with 128 prompts on roberta-large saves
        128 x 24 x 2 x 1024 = 6,291,456 numbers. Loading a checkpoint gives the plain parameter (no MLP).

Positions (`shift_positions`, decoder-only and encoder-only families): the reference implementations feed the
prefix as past key/values, so a model with learned absolute positions (GPT-2 wpe, BERT/RoBERTa position
embeddings) or rotary positions (Llama: `position_ids` of the anatomy's `rotary` module) numbers the real
tokens from P on (Li & Liang's GPT-2 code, P-tuning v2's BERT code, peft). True
keeps that (and peft parity); false numbers them from 0. Encoder-decoders are never shifted (Li & Liang's BART
did not; T5 is relative: its position bias gets zero columns for the prefix).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from peftrun.backbones.anatomy import Anatomy, get_module
from peftrun.errors import PeftrunError
from peftrun.methods.attention_hook import COMPOSITIONS, Route, route, unroute
from peftrun.methods.base import Delta, register_delta
from peftrun.methods.peft_format import PROMPT_KEY, take
from peftrun.methods.prefix_spec import PrefixSpec
from peftrun.methods.sites import check_selection, resolve_layers


@dataclass(frozen=True)
class Group:
    """One (stack, attention kind): its layers, their attention module paths and key/value sizes."""

    stack: str
    kind: str
    layers: tuple[int, ...]
    modules: tuple[str, ...]
    kv_heads: int
    head_dim: int

    @property
    def name(self) -> str:
        return f"{self.stack}_{self.kind}"

    @property
    def inner(self) -> int:
        return self.kv_heads * self.head_dim


class PrefixMLP(nn.Module):
    """Li & Liang's reparameterisation: E (P, d) -> tanh MLP -> (P, L * 2 * d_in)."""

    def __init__(self, length: int, width: int, mid_dim: int, out: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(length, width)
        self.transform = nn.Sequential(nn.Linear(width, mid_dim), nn.Tanh(), nn.Linear(mid_dim, out))

    def forward(self) -> torch.Tensor:
        return self.transform(self.embedding.weight)


def absolute_position_table(model: nn.Module) -> nn.Embedding | None:
    """The learned absolute position table of the base model (GPT-2 wpe, BERT position_embeddings), if any.

    It is the plain nn.Embedding with `config.max_position_embeddings` rows other than the word embeddings
    (BART's offset table is a subclass and T5 has none: both give None).
    """
    rows = getattr(model.config, "max_position_embeddings", None)
    words = model.get_input_embeddings()
    for module in getattr(model, "base_model", model).modules():
        if type(module) is nn.Embedding and module is not words and module.num_embeddings == rows:
            return module
    return None


@register_delta("prefix")
class Prefix(Delta):
    spec_class = PrefixSpec

    def __init__(self, spec: PrefixSpec, anatomy: Anatomy) -> None:
        super().__init__(spec, anatomy)
        self.groups: list[Group] = []
        self.encoders = nn.ModuleDict()  # group -> PrefixMLP (mid_dim set, until a checkpoint is loaded)
        self.prefixes = nn.ParameterDict()  # group -> (L, 2, P, d_in) (mid_dim null, or after loading)
        self.dropout = nn.Dropout(spec.dropout) if spec.dropout > 0 else nn.Identity()
        self._memo: dict[str, torch.Tensor] = {}
        self._route: Route | None = None
        self._handles: list[Any] = []

    @classmethod
    def supports(cls, spec: PrefixSpec, anatomy: Anatomy) -> str | None:
        if spec.length <= 0:
            return f"length={spec.length}; the prefix length must be a positive integer (e.g. length=10)"
        if spec.mid_dim is not None and spec.mid_dim <= 0:
            return f"mid_dim={spec.mid_dim}; must be positive, or null for no reparameterisation (P-tuning v2)"
        if not 0.0 <= spec.dropout < 1.0:
            return f"dropout={spec.dropout}; must be in [0, 1)"
        if spec.composition not in COMPOSITIONS:
            return f"composition={spec.composition!r}; allowed: {', '.join(COMPOSITIONS)}"
        return check_selection(anatomy, spec.stacks, spec.attention, spec.layers, uses_attention=True)

    # --- building -------------------------------------------------------------------------------------------

    def _select(self, model: nn.Module) -> list[Group]:
        from peftrun.backbones.families import get_family

        shape = get_family(self.anatomy.family).shape(model.config)
        groups = []
        for stack in self.anatomy.stacks:
            if self.spec.stacks is not None and stack.name not in self.spec.stacks:
                continue
            layers = resolve_layers(stack, len(get_module(model, stack.layers)), self.spec.layers)
            sizes = shape.stacks[stack.name]
            for attention in stack.attentions:
                if attention.kind in self.spec.attention and layers:
                    modules = tuple(f"{stack.layers}.{i}.{attention.module}" for i in layers)
                    groups.append(Group(stack.name, attention.kind, tuple(layers), modules, sizes.kv_heads,
                                        sizes.head_dim))
        return groups

    def attach(self, model: nn.Module) -> None:
        self.groups = self._select(model)
        if not self.groups:
            raise PeftrunError("the prefix selects no attention sublayer of this model; fix stacks/attention/layers")
        like = next(model.parameters())
        kw = {"device": like.device, "dtype": like.dtype}
        P = self.spec.length
        for group in self.groups:
            if group.name in self.encoders or group.name in self.prefixes:
                continue
            if self.spec.mid_dim is not None:
                out = len(group.layers) * 2 * group.inner
                self.encoders[group.name] = PrefixMLP(P, group.inner, self.spec.mid_dim, out).to(**kw)
            else:
                self.prefixes[group.name] = nn.Parameter(torch.randn(len(group.layers), 2, P, group.inner, **kw))
        sources: dict[nn.Module, Callable] = {}
        for group in self.groups:
            for index, path in enumerate(group.modules):
                sources[get_module(model, path)] = _LayerPrefix(self, group, index)
            stack_root = get_module(model, self.anatomy.stack(group.stack).layers.rsplit(".", 1)[0])
            self._handles.append(stack_root.register_forward_pre_hook(self._forget(group.name)))
        if self.spec.shift_positions and not self.anatomy.is_encoder_decoder:
            if self.anatomy.rotary is not None:
                rotary = get_module(model, self.anatomy.rotary)
                self._handles.append(rotary.register_forward_pre_hook(self._shift_rotary, with_kwargs=True))
            else:
                table = absolute_position_table(model)
                if table is not None:
                    self._handles.append(table.register_forward_pre_hook(self._shift))
        self._route = route(model, sources)

    def detach(self, model: nn.Module) -> None:
        if self._route is not None:
            unroute(self._route)
            self._route = None
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._memo.clear()

    def _forget(self, name: str) -> Callable:
        """Pre-hook on a stack: its prefix is computed once per pass through the stack (one dropout draw)."""

        def hook(_module: nn.Module, _args: tuple) -> None:
            self._memo.pop(name, None)

        return hook

    def _shift(self, _module: nn.Module, args: tuple) -> tuple:
        return (args[0] + self.spec.length,) + tuple(args[1:])

    def _shift_rotary(self, _module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        """Rotary module forward(x, position_ids): the real tokens' positions start at P."""
        if "position_ids" in kwargs:
            return args, {**kwargs, "position_ids": kwargs["position_ids"] + self.spec.length}
        return (args[0], args[1] + self.spec.length, *args[2:]), kwargs

    # --- the prefix -----------------------------------------------------------------------------------------

    def compute(self, group: Group) -> torch.Tensor:
        """The group's prefix (L, 2, P, d_in), without dropout."""
        if group.name in self.prefixes:
            return self.prefixes[group.name]
        flat = self.encoders[group.name]()  # (P, L * 2 * d_in)
        return flat.view(self.spec.length, len(group.layers), 2, group.inner).permute(1, 2, 0, 3)

    def current(self, group: Group) -> torch.Tensor:
        """The prefix of this pass through the group's stack (computed on first use, dropout applied)."""
        if group.name not in self._memo:
            self._memo[group.name] = self.dropout(self.compute(group))
        return self._memo[group.name]

    # --- save / load / accounting ---------------------------------------------------------------------------

    def saved_state_dict(self) -> dict[str, torch.Tensor]:
        """{group: prefix (L, 2, P, d_in)}: the reparameterisation's output, never the MLP."""
        with torch.no_grad():
            return {group.name: self.compute(group).detach().clone() for group in self.groups}

    def load_saved_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load saved prefixes into plain parameters (the MLP, if any, is dropped)."""
        expected = {group.name: (len(group.layers), 2, self.spec.length, group.inner) for group in self.groups}
        if set(state) != set(expected):
            raise PeftrunError(
                f"prefix checkpoint has groups {sorted(state)}, the method expects {sorted(expected)}; "
                "load it with the backbone and method it was saved from"
            )
        for name, shape in expected.items():
            if tuple(state[name].shape) != shape:
                raise PeftrunError(f"prefix checkpoint {name} has shape {tuple(state[name].shape)}, expected {shape}")
        like = next(iter(self.parameters()))
        self.encoders = nn.ModuleDict()
        self.prefixes = nn.ParameterDict({
            name: nn.Parameter(tensor.detach().to(device=like.device, dtype=like.dtype).clone())
            for name, tensor in state.items()
        })
        self._memo.clear()

    def per_role_counts(self) -> dict[str, int]:
        """Trainable numbers per (stack, attention kind), MLP included."""
        counts = {}
        for group in self.groups:
            if group.name in self.encoders:
                params = list(self.encoders[group.name].parameters())
            else:
                params = [self.prefixes[group.name]]
            counts[f"{group.stack}.{group.kind}"] = sum(p.numel() for p in params)
        return counts


    # --- peft layout ----------------------------------------------------------------------------------------
    # peft's PREFIX_TUNING holds `prompt_embeddings` (P, L * 2 * d_in): row p, chunk 2l (2l + 1) = layer l's key
    # (value) at prefix position p, i.e. the output of the reparameterisation when prefix_projection is on (peft
    # saves only that, as peftrun). It feeds them as the past key/values of a decoder-only model, whose absolute
    # positions then start at P (shift_positions=true). Expressible: a decoder-only model, every layer, concat,
    # shifted positions. Not mapped: an encoder-decoder, where peft (0.21) passes one table, duplicated, as the
    # decoder's cache for its self and cross attention (by peft's split, self = layer 2l's pair, cross = layer
    # 2l+1's) and the encoder gets no prefix; peftrun's per-(stack, attention kind) prefixes have no such ties.

    def to_peft(self, model: nn.Module) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        reason = _peft_reason(self.anatomy, self.spec.composition, self.spec.shift_positions)
        (group,) = self.groups if len(self.groups) == 1 else (None,)
        stack = self.anatomy.stacks[0]
        if reason is None and (group is None or len(group.layers) != len(get_module(model, stack.layers))):
            reason = "peft's prefix covers every layer; this prefix selects layers " + str(self.spec.layers)
        if reason:
            raise PeftrunError(f"prefix: {reason}; use save() instead")
        prefix = self.saved_state_dict()[group.name]  # (L, 2, P, d_in)
        L, _, P, inner = prefix.shape
        config = {"num_virtual_tokens": P, "token_dim": inner, "num_layers": L, "num_attention_heads": group.kv_heads,
                  "num_transformer_submodules": 1, "prefix_projection": self.spec.mid_dim is not None,
                  "encoder_hidden_size": self.spec.mid_dim or inner}
        return config, {"prompt_embeddings": prefix.permute(2, 0, 1, 3).reshape(P, L * 2 * inner)}

    @classmethod
    def from_peft(cls, config: dict[str, Any], tensors: dict[str, torch.Tensor], model: nn.Module,
                  anatomy: Anatomy) -> tuple[dict[str, Any], Callable[[Delta], dict[str, torch.Tensor]]]:
        reason = _peft_reason(anatomy, "concat", True)
        if reason is None and config.get("num_transformer_submodules", 1) != 1:
            reason = f"num_transformer_submodules={config['num_transformer_submodules']} (an encoder-decoder prefix)"
        if reason:
            raise PeftrunError(f"peft prefix-tuning: {reason}")
        P, L = int(config["num_virtual_tokens"]), int(config["num_layers"])
        table = take(tensors, PROMPT_KEY)
        item = {"kind": "prefix", "length": P, "mid_dim": None, "shift_positions": True}

        def state(delta: Delta) -> dict[str, torch.Tensor]:
            (group,) = delta.groups
            if table.shape != (P, L * 2 * group.inner) or len(group.layers) != L:
                raise PeftrunError(f"prompt_embeddings {tuple(table.shape)} do not fit this model's prefix "
                                   f"({len(group.layers)} layers x 2 x {group.inner})")
            return {group.name: table.view(P, L, 2, group.inner).permute(1, 2, 0, 3)}

        return item, state


def _peft_reason(anatomy: Anatomy, composition: str, shifted: bool) -> str | None:
    """Why peft's prefix-tuning layout cannot express this prefix, or None."""
    if anatomy.kind != "decoder":
        return (f"peft's layout is expressed here for decoder-only models, not a {anatomy.kind} "
                f"({anatomy.family}; see prefix.py's peft notes)")
    if composition != "concat":
        return f"composition={composition}: peft's prefix is concatenated (concat)"
    if not shifted:
        return "shift_positions=false: peft's real tokens' positions start at P"
    return None


class _LayerPrefix:
    """KVSource of one attention module: layer `index` of `group`, as (1, H_kv, P, head_dim) keys and values."""

    def __init__(self, delta: Prefix, group: Group, index: int) -> None:
        self.delta = delta
        self.group = group
        self.index = index
        self.composition = delta.spec.composition

    def __call__(self) -> tuple[torch.Tensor, torch.Tensor]:
        layer = self.delta.current(self.group)[self.index]  # (2, P, d_in)
        P = layer.shape[1]
        kv = layer.view(2, P, self.group.kv_heads, self.group.head_dim).transpose(1, 2)  # (2, H_kv, P, head_dim)
        return kv[0].unsqueeze(0), kv[1].unsqueeze(0)
