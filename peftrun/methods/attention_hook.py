"""Key/value deltas through the transformers attention interface: one wrapper for every family and attention kind.

Every attention module of GPT-2, BART, T5 and BERT/RoBERTa calls

    ALL_ATTENTION_FUNCTIONS.get_interface(config._attn_implementation, eager_attention_forward)(
        module, query, key, value, attention_mask, scaling=..., dropout=..., [position_bias=...] ...)

with query (B, H, q, d) and key/value (B, H_kv, kv, d) already projected (H_kv < H with grouped-query attention,
Llama: the stock functions repeat each key/value head for its group of query heads) (and, in generation, read from / written
to the KV cache). `route` sets `_attn_implementation` of every config of a model to IMPLEMENTATION, whose
attention function looks the module up, prepends its prefix keys/values (B, H_kv, P, d) and calls the stock
implementation (sdpa, or the module's own eager function). The prefix never enters the KV cache, so the cache
holds only real tokens and generation needs nothing special.

The mask: `masking_utils` builds masks only for implementations registered in AttentionMaskInterface: for any
other name `_preprocess_mask_arguments` returns None early, which would silently drop padding. So the same name
is registered there too, delegating to the stock mask function of the underlying implementation (a bool mask
for sdpa, additive float for eager, or None where sdpa relies on `is_causal`). The attention wrapper then
widens the mask by P always-visible columns for every query row (padding rows included); a None mask of a
causal call (q > 1) is materialised as the causal pattern first (sdpa's upper-left alignment, which is what
transformers relies on when it skips the mask). T5's relative position bias (1|B, H, q, kv) gets P zero columns.

Compositions (He et al. 2022, "Towards a unified view", eq. 5-7), with h = Attn(q, K, V) over the real tokens
and dh = softmax(q P_k^T * scale) P_v over the prefix:
    concat  attention over [P_k; K], [P_v; V]: Li & Liang's prefix tuning
    gated   (1 - lam) h + lam dh,  lam = sum exp(q P_k^T s) / (sum exp(q P_k^T s) + sum exp(q K^T s + bias + mask)),
            computed explicitly: equal to concat (the paper's rewrite), exposed to study the gate
    add     h + dh: the paper's ablation without the gate ("prefix, vanilla add")
"""

from __future__ import annotations

import sys
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from peftrun.errors import PeftrunError

IMPLEMENTATION = "peftrun_prefix"
SUPPORTED_BASES = ("sdpa", "eager")
COMPOSITIONS = ("concat", "gated", "add")


class KVSource(Protocol):
    """What an attention module's prefix comes from: `()` -> (keys, values), each (1|B, H_kv, P, head_dim)."""

    composition: str

    def __call__(self) -> tuple[torch.Tensor, torch.Tensor]: ...


@dataclass
class _ConfigState:
    config: Any
    base: str  # the implementation the model used before: "sdpa" | "eager"
    users: int = 0


@dataclass
class Route:
    """Handle returned by `route`: which modules and configs to release in `unroute`."""

    modules: list[weakref.ref] = field(default_factory=list)
    sources: list[KVSource] = field(default_factory=list)
    config_ids: list[int] = field(default_factory=list)


# attention module -> its prefix sources, in attach order (weak keys: a dropped model takes its entries along)
_SOURCES: weakref.WeakKeyDictionary[nn.Module, list[KVSource]] = weakref.WeakKeyDictionary()
# id(config) -> state (holding the config, so its id stays unique) for every config switched to IMPLEMENTATION
_CONFIGS: dict[int, _ConfigState] = {}


def _configs_of(model: nn.Module) -> list[Any]:
    """Distinct config objects of `model` and its submodules (T5's stacks hold their own copies)."""
    found: dict[int, Any] = {}
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "_attn_implementation"):
            found.setdefault(id(config), config)
    return list(found.values())


def route(model: nn.Module, sources: dict[nn.Module, KVSource]) -> Route:
    """Make every attention module in `sources` attend over its prefix too (see module docstring)."""
    handle = Route()
    configs = _configs_of(model)
    for config in configs:
        state = _CONFIGS.get(id(config))
        if state is None:
            base = config._attn_implementation or "eager"
            if base not in SUPPORTED_BASES:
                raise PeftrunError(
                    f"prefix deltas work with attention implementation sdpa or eager, but this model uses {base!r}; "
                    "load the backbone with attn_implementation='sdpa' (the default) or 'eager'"
                )
            state = _CONFIGS[id(config)] = _ConfigState(config, base)
            config._attn_implementation_internal = IMPLEMENTATION
        state.users += 1
        handle.config_ids.append(id(config))
    for module, source in sources.items():
        _SOURCES.setdefault(module, []).append(source)
        handle.modules.append(weakref.ref(module))
        handle.sources.append(source)
    return handle


def unroute(handle: Route) -> None:
    """Undo `route`: drop the sources and restore each config's implementation when its last user leaves."""
    for reference, source in zip(handle.modules, handle.sources, strict=True):
        module = reference()
        if module is None:
            continue
        remaining = [s for s in _SOURCES.get(module, []) if s is not source]
        if remaining:
            _SOURCES[module] = remaining
        else:
            _SOURCES.pop(module, None)
    for config_id in handle.config_ids:
        state = _CONFIGS[config_id]
        state.users -= 1
        if state.users == 0:
            state.config._attn_implementation_internal = state.base
            del _CONFIGS[config_id]
    handle.modules.clear()
    handle.sources.clear()
    handle.config_ids.clear()


def _base_of(config: Any) -> str:
    state = _CONFIGS.get(id(config))
    if state is None:
        raise PeftrunError(
            f"a config uses attention implementation {IMPLEMENTATION!r} but no prefix delta is attached to its model; "
            "attach the method again or reload the backbone"
        )
    return state.base


_EAGER: dict[type, Callable[..., Any]] = {}


def _base_function(module: nn.Module, base: str) -> Callable[..., Any]:
    """The stock attention function: sdpa from the registry, eager = the module's own modeling file's."""
    if base != "eager":
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        return ALL_ATTENTION_FUNCTIONS[base]
    cls = type(module)
    if cls not in _EAGER:
        function = getattr(sys.modules[cls.__module__], "eager_attention_forward", None)
        if function is None:
            raise PeftrunError(f"{cls.__name__} has no eager_attention_forward in {cls.__module__}; use sdpa")
        _EAGER[cls] = function
    return _EAGER[cls]


def prefix_mask(*args: Any, config: Any = None, **kwargs: Any) -> Any:
    """AttentionMaskInterface entry: the stock mask of the model's underlying implementation (unchanged)."""
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    return ALL_MASK_ATTENTION_FUNCTIONS[_base_of(config)](*args, config=config, **kwargs)


def _is_causal(module: nn.Module, kwargs: dict[str, Any], q_len: int) -> bool:
    flag = kwargs.get("is_causal")
    if flag is None:
        flag = getattr(module, "is_causal", False)
    return bool(flag) and q_len > 1


def _real_mask(module: nn.Module, mask: torch.Tensor | None, kwargs: dict[str, Any], q: torch.Tensor,
               k: torch.Tensor) -> torch.Tensor | None:
    """The mask over real keys as a tensor; a skipped causal mask is materialised (upper-left), else None."""
    if mask is not None or not _is_causal(module, kwargs, q.shape[2]):
        return mask
    rows = torch.arange(q.shape[2], device=q.device)[:, None]
    cols = torch.arange(k.shape[2], device=q.device)[None, :]
    return (cols <= rows)[None, None]


def _widen(mask: torch.Tensor | None, length: int) -> torch.Tensor | None:
    """Prepend `length` always-visible columns (True for bool masks, 0 for additive ones)."""
    if mask is None:
        return None
    shape = (*mask.shape[:-1], length)
    visible = torch.ones(shape, dtype=torch.bool, device=mask.device) if mask.dtype == torch.bool else \
        torch.zeros(shape, dtype=mask.dtype, device=mask.device)
    return torch.cat([visible, mask], dim=-1)


def _additive(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    if mask is None or mask.dtype != torch.bool:
        return mask
    return torch.where(mask, torch.zeros((), dtype=dtype, device=mask.device), torch.finfo(dtype).min)


def _gather(module: nn.Module, batch: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, str]:
    sources = _SOURCES[module]
    compositions = {s.composition for s in sources}
    if len(compositions) > 1 or (len(sources) > 1 and compositions != {"concat"}):
        raise PeftrunError(
            f"{len(sources)} prefix deltas on one attention with compositions {sorted(compositions)}: several prefixes "
            "can only be combined with composition=concat"
        )
    keys, values = zip(*(source() for source in sources), strict=True)
    pk = torch.cat(keys, dim=2).to(like.dtype)
    pv = torch.cat(values, dim=2).to(like.dtype)
    return pk.expand(batch, -1, -1, -1), pv.expand(batch, -1, -1, -1), compositions.pop()


def prefix_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attention_mask: torch.Tensor | None, **kwargs: Any) -> tuple[torch.Tensor, Any]:
    """AttentionInterface entry (see module docstring). Returns (output (B, q, H, d), weights or None)."""
    base = _base_of(module.config)
    function = _base_function(module, base)
    if module not in _SOURCES:
        return function(module, query, key, value, attention_mask, **kwargs)
    pk, pv, composition = _gather(module, query.shape[0], query)
    length = pk.shape[2]
    mask = _real_mask(module, attention_mask, kwargs, query, key)
    if composition != "concat":
        return _explicit(module, query, key, value, mask, pk, pv, composition, function, kwargs)
    if base == "eager":
        mask = _additive(mask, query.dtype)
    call = dict(kwargs)
    if call.get("position_bias") is not None:
        call["position_bias"] = F.pad(call["position_bias"], (length, 0))
    return function(module, query, torch.cat([pk, key], dim=2), torch.cat([pv, value], dim=2), _widen(mask, length),
                    **call)


def _explicit(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
              mask: torch.Tensor | None, pk: torch.Tensor, pv: torch.Tensor, composition: str,
              function: Callable[..., Any], kwargs: dict[str, Any]) -> tuple[torch.Tensor, None]:
    """The gated / add forms: two attentions (real tokens, prefix) composed as in the module docstring."""
    group = query.shape[1] // pk.shape[1]  # grouped-query attention: each key/value head serves `group` queries
    pk, pv = pk.repeat_interleave(group, dim=1), pv.repeat_interleave(group, dim=1)
    scaling = kwargs.get("scaling")
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    dropout = kwargs.get("dropout", 0.0) if module.training else 0.0
    prefix_scores = torch.matmul(query, pk.transpose(-1, -2)) * scaling  # (B, H, q, P)
    delta = torch.matmul(F.dropout(prefix_scores.softmax(-1), dropout, module.training), pv)  # (B, H, q, d)
    if composition == "add":
        if _base_of(module.config) == "eager":
            mask = _additive(mask, query.dtype)
        real, _ = function(module, query, key, value, mask, **kwargs)
        return real + delta.transpose(1, 2), None
    key, value = key.repeat_interleave(group, dim=1), value.repeat_interleave(group, dim=1)
    scores = torch.matmul(query, key.transpose(-1, -2)) * scaling  # (B, H, q, kv)
    if kwargs.get("position_bias") is not None:
        scores = scores + kwargs["position_bias"]
    additive = _additive(mask, scores.dtype)
    if additive is not None:
        scores = scores + additive
    real = torch.matmul(F.dropout(scores.softmax(-1), dropout, module.training), value)
    gate = torch.sigmoid(torch.logsumexp(prefix_scores, -1) - torch.logsumexp(scores, -1))[..., None]
    return ((1 - gate) * real + gate * delta).transpose(1, 2).contiguous(), None


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(IMPLEMENTATION, prefix_attention)
    AttentionMaskInterface.register(IMPLEMENTATION, prefix_mask)


_register()
