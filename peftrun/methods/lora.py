"""LoRA (Hu et al. 2021): a trainable low-rank update of frozen projections.

    h = W0 x + (alpha / r) * B A dropout(x)        A: [r, in], B: [out, r]

A is kaiming-uniform(a=sqrt(5)) (the reference code's / peft's init of nn.Linear), B is zero, so at
step 0 the model is exactly the base model. Targets are roles (q, k, v, o, ffn_in, ffn_gate, ffn_out; `qkv` =
GPT-2's whole fused c_attn, which is what peft targets). On a fused projection q/k/v are slices of the
output: each selected slice gets its own A and B (the paper's MergedLinear with enable_lora=[True,
False, True]), so rank r on q and v of gpt2-medium costs 24 x 2 x r x (1024 + 1024) parameters.

The update enters through a forward hook on the projection (the module tree and the backbone state-dict
keys stay untouched) and can be merged into W0 (zero added latency) and unmerged again. Conv1D weights
are [in, out], so their update is (B A)^T.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from peftrun.backbones.anatomy import Anatomy, get_module
from peftrun.errors import PeftrunError
from peftrun.methods.base import Delta, register_delta
from peftrun.methods.lora_spec import LoRASpec
from peftrun.methods.peft_format import PEFT_PREFIX, take
from peftrun.methods.sites import (
    FFN_PROJECTION_ROLES,
    PROJECTION_ROLES,
    QKV_PARTS,
    Site,
    check_roles,
    check_selection,
    projection_shape,
    select_sites,
)


class LoRAModule(nn.Module):
    """The low-rank pair of one site: lora_A [r, in], lora_B [out, r] (peft's names and shapes)."""

    def __init__(self, in_features: int, out_features: int, rank: int, like: torch.Tensor) -> None:
        super().__init__()
        self.lora_A = nn.Linear(in_features, rank, bias=False, device=like.device, dtype=like.dtype)
        self.lora_B = nn.Linear(rank, out_features, bias=False, device=like.device, dtype=like.dtype)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)

    def update(self) -> torch.Tensor:
        """B A, shape [out, in] (unscaled)."""
        return self.lora_B.weight @ self.lora_A.weight


@register_delta("lora")
class LoRA(Delta):
    spec_class = LoRASpec

    def __init__(self, spec: LoRASpec, anatomy: Anatomy) -> None:
        super().__init__(spec, anatomy)
        self.scaling = spec.alpha / spec.rank
        self.dropout = nn.Dropout(spec.dropout) if spec.dropout > 0 else nn.Identity()
        self.pairs = nn.ModuleDict()  # site.key -> LoRAModule
        self.sites: list[Site] = []  # filled by attach (needs the model for layer counts)
        self._handles: list[Any] = []
        self.merged = False

    @classmethod
    def supports(cls, spec: LoRASpec, anatomy: Anatomy) -> str | None:
        if spec.rank <= 0:
            return f"rank={spec.rank}; the rank must be a positive integer (e.g. rank=4)"
        if not 0.0 <= spec.dropout < 1.0:
            return f"dropout={spec.dropout}; must be in [0, 1)"
        reason = check_roles(anatomy, spec.targets, PROJECTION_ROLES)
        if reason:
            return reason
        uses_attention = any(r not in FFN_PROJECTION_ROLES for r in spec.targets)
        return check_selection(anatomy, spec.stacks, spec.attention, spec.layers, uses_attention)

    # --- building -------------------------------------------------------------------------------------------

    def attach(self, model: nn.Module) -> None:
        self.sites = select_sites(
            model, self.anatomy, self.spec.targets, self.spec.stacks, self.spec.attention, self.spec.layers
        )
        if not self.sites:
            raise PeftrunError(f"lora targets={self.spec.targets} selects no projection of this model; fix targets")
        for site in self.sites:
            module = get_module(model, site.path)
            d_in, d_out, _ = projection_shape(module)
            if site.part is not None:
                d_out //= 3
            if site.key not in self.pairs:
                self.pairs[site.key] = LoRAModule(d_in, d_out, self.spec.rank, module.weight)
        # prepend: a weight-side update belongs to the projection itself, so hidden-side deltas hooked on the
        # same module (a sequential adapter on o) see W0 x + LoRA(x), whatever the order of the deltas.
        for path, sites in self._by_module().items():
            module = get_module(model, path)
            handle = module.register_forward_hook(self._hook(sites), with_kwargs=True, prepend=True)
            self._handles.append(handle)

    def detach(self, model: nn.Module) -> None:
        if self.merged:
            self.unmerge(model)
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _by_module(self) -> dict[str, list[Site]]:
        grouped: dict[str, list[Site]] = defaultdict(list)
        for site in self.sites:
            grouped[site.path].append(site)
        return grouped

    def _hook(self, sites: list[Site]) -> Callable[..., torch.Tensor]:
        """Forward hook adding (alpha/r) B A dropout(x) to the projection output (slices padded with zeros)."""
        pairs = [(site.part, self.pairs[site.key]) for site in sites]
        fused = sites[0].part is not None

        def hook(mod: nn.Module, args: tuple, kwargs: dict, output: torch.Tensor) -> torch.Tensor:
            if self.merged:
                return output
            x = args[0] if args else next(iter(kwargs.values()))
            x = self.dropout(x)
            if not fused:
                (_, pair), = pairs
                return output + pair.lora_B(pair.lora_A(x)) * self.scaling
            width = output.shape[-1] // 3
            parts: list[torch.Tensor | None] = [None, None, None]
            for part, pair in pairs:
                parts[part] = pair.lora_B(pair.lora_A(x)) * self.scaling
            zeros = output.new_zeros(*output.shape[:-1], width)
            return output + torch.cat([p if p is not None else zeros for p in parts], dim=-1)

        return hook

    # --- merging --------------------------------------------------------------------------------------------

    def _apply_update(self, model: nn.Module, sign: float) -> None:
        with torch.no_grad():
            for site in self.sites:
                module = get_module(model, site.path)
                _, d_out, transposed = projection_shape(module)
                update = self.pairs[site.key].update() * (sign * self.scaling)
                if site.part is None:
                    rows = slice(None)
                else:
                    width = d_out // 3
                    rows = slice(site.part * width, (site.part + 1) * width)
                if transposed:
                    module.weight[:, rows] += update.T.to(module.weight.dtype)
                else:
                    module.weight[rows, :] += update.to(module.weight.dtype)

    def merge(self, model: nn.Module) -> None:
        """W0 <- W0 + (alpha/r) B A (transposed for Conv1D); the hook then adds nothing."""
        if self.merged:
            return
        self._apply_update(model, +1.0)
        self.merged = True

    def unmerge(self, model: nn.Module) -> None:
        """W0 <- W0 - (alpha/r) B A: restores W0 up to float rounding (|err| ~ 1e-7 |W0| in fp32)."""
        if not self.merged:
            return
        self._apply_update(model, -1.0)
        self.merged = False

    # --- accounting -----------------------------------------------------------------------------------------

    def per_role_counts(self) -> dict[str, int]:
        counts: dict[str, int] = defaultdict(int)
        for site in self.sites:
            counts[site.role] += sum(p.numel() for p in self.pairs[site.key].parameters())
        return dict(counts)

    # --- peft layout ----------------------------------------------------------------------------------------

    def to_peft(self, model: nn.Module) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        sliced = sorted({s.role for s in self.sites if s.part is not None})
        if sliced:
            raise PeftrunError(
                f"peft cannot express LoRA on the {sliced} slices of {self.anatomy.family}'s fused qkv projection "
                "(peft adapts the whole c_attn); train with targets=[qkv] for a peft-compatible LoRA, or use save()"
            )
        tensors = {}
        for site in self.sites:
            pair = self.pairs[site.key]
            tensors[f"{PEFT_PREFIX}{site.path}.lora_A.weight"] = pair.lora_A.weight
            tensors[f"{PEFT_PREFIX}{site.path}.lora_B.weight"] = pair.lora_B.weight
        spec = self.spec
        config = {
            "r": spec.rank,
            "lora_alpha": spec.alpha,
            "lora_dropout": spec.dropout,
            "target_modules": sorted({site.path for site in self.sites}),
            "fan_in_fan_out": self.anatomy.conv1d_projections,
            "bias": "none",
            "use_rslora": False,
            "use_dora": False,
            "modules_to_save": None,
            "init_lora_weights": True,
            "layers_to_transform": None,
            "layers_pattern": None,
            "rank_pattern": {},
            "alpha_pattern": {},
        }
        return config, tensors

    @classmethod
    def from_peft(cls, config: dict[str, Any], tensors: dict[str, torch.Tensor], model: nn.Module,
                  anatomy: Anatomy) -> tuple[dict[str, Any], Callable[[Delta], dict[str, torch.Tensor]]]:
        for key, off in _UNSUPPORTED.items():
            if key in config and config[key] not in off:
                raise PeftrunError(
                    f"peft option {key}={config[key]!r} has no peftrun LoRA equivalent "
                    f"(supported: {off[0]!r}); re-train without it or load it with peft"
                )
        fused = any(a.qkv is not None for s in anatomy.stacks for a in s.attentions)
        roles = [r for r in PROJECTION_ROLES if not (fused and r in QKV_PARTS) and not (not fused and r == "qkv")]
        candidates = {s.path: s for s in select_sites(model, anatomy, roles)}
        matched = _matched_modules(model, config)
        strays = [name for name in matched if name not in candidates]
        if strays:
            raise PeftrunError(
                f"peft LoRA targets {strays[:3]}, which are no role of the {anatomy.family} anatomy "
                f"(roles: {', '.join(roles)}); peftrun cannot attach LoRA there"
            )
        if not matched:
            raise PeftrunError(f"target_modules={config.get('target_modules')!r} matches no module")
        sites = [candidates[name] for name in matched]
        selection = _spec_from_sites(sites, anatomy, model)
        expected = {s.path for s in select_sites(model, anatomy, selection["targets"], selection["stacks"],
                                                 selection["attention"], selection["layers"])}
        if expected != set(matched):
            raise PeftrunError(
                f"the peft targets {sorted(set(matched) - expected or expected - set(matched))[:3]} are not a "
                "(roles x layers x stacks x attention kinds) selection peftrun's LoRA spec can express"
            )
        item = {"kind": "lora", "rank": int(config["r"]), "alpha": float(config["lora_alpha"]),
                "dropout": float(config.get("lora_dropout") or 0.0), **selection}

        def state(lora: Delta) -> dict[str, torch.Tensor]:
            out = {}
            for site in lora.sites:
                for name in ("lora_A", "lora_B"):
                    out[f"pairs.{site.key}.{name}.weight"] = take(tensors, f"{PEFT_PREFIX}{site.path}.{name}.weight")
            return out

        return item, state


# ------------------------------------------------------------------------------------------------- peft layout
# adapter_config.json: peft's LoraConfig fields (r, lora_alpha, target_modules ...); adapter_model.safetensors:
# "base_model.model.<module path>.lora_A.weight" [r, in] and ".lora_B.weight" [out, r]. Export writes the exact
# module paths as `target_modules` (peft matches a key equal to a target). Import finds the modules peft's matching
# rule selects, maps each to its role through the anatomy and re-expresses the set as a LoRA spec (targets,
# layers, stacks, attention kinds). What one side cannot express is an error: per-slice LoRA on GPT-2's fused
# c_attn (peft adapts the whole c_attn), a peft LoRA on a module that is no role, per-module ranks, DoRA, rsLoRA,
# trained biases.

_UNSUPPORTED = {  # peft config key -> value meaning "feature off"
    "use_dora": (False, None),
    "use_rslora": (False, None),
    "bias": ("none", None),
    "modules_to_save": (None, []),
    "rank_pattern": ({}, None),
    "alpha_pattern": ({}, None),
    "layer_replication": (None, []),
    "lora_bias": (False, None),
    "target_parameters": (None, []),
    "trainable_token_indices": (None, [], {}),
    "exclude_modules": (None, [], ""),
}


def _peft_matches(config: dict[str, Any], key: str) -> bool:
    """peft's rule (tuners_utils.check_target_module_exists) for whether module `key` is a LoRA target."""
    targets = config.get("target_modules")
    if isinstance(targets, str):
        return re.fullmatch(targets, key) is not None
    if key in targets:
        return True
    if not any(key.endswith(f".{t}") for t in targets):
        return False
    indexes = config.get("layers_to_transform")
    if indexes is None or indexes == []:
        return True
    patterns = config.get("layers_pattern")
    if not patterns:
        match = re.match(r".*?\.[^.]*\.(?P<idx>\d+)\.", key)
    else:
        match = None
        for pattern in [patterns] if isinstance(patterns, str) else patterns:
            match = re.match(rf"(?:^|.*?\.){pattern}\.(?P<idx>\d+)\.", key)
            if match is not None:
                break
    if match is None:
        return False
    index = int(match.group("idx"))
    return index == indexes if isinstance(indexes, int) else index in indexes


def _matched_modules(model: nn.Module, config: dict[str, Any]) -> list[str]:
    from transformers.pytorch_utils import Conv1D

    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if config.get("target_modules") == "all-linear":
        return [
            name for name, m in model.named_modules()
            if isinstance(m, nn.Linear | Conv1D) and m is not output
        ]
    return [name for name, _ in model.named_modules() if name and _peft_matches(config, name)]


def _spec_from_sites(sites: list[Site], anatomy: Anatomy, model: nn.Module) -> dict[str, Any]:
    """The peftrun LoRA selection (targets, layers, stacks, attention) that covers `sites`."""
    stacks = sorted({s.stack for s in sites}, key=[st.name for st in anatomy.stacks].index)
    layers = sorted({s.layer for s in sites})
    all_layers = all(layers == list(range(len(anatomy.layers(model, name)))) for name in stacks)
    attention = sorted({s.attention for s in sites if s.attention is not None}) or ["self", "cross"]
    return {
        "targets": sorted({s.role for s in sites}, key=PROJECTION_ROLES.index),
        "layers": None if all_layers else layers,
        "stacks": None if len(stacks) == len(anatomy.stacks) else stacks,
        "attention": attention,
    }
