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
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from peftrun.backbones.anatomy import Anatomy, get_module
from peftrun.errors import PeftrunError
from peftrun.methods.base import Delta, register_delta
from peftrun.methods.sites import (
    ATTENTION_KINDS,
    FFN_PROJECTION_ROLES,
    PROJECTION_ROLES,
    Site,
    check_roles,
    check_selection,
    projection_shape,
    select_sites,
)


@dataclass
class LoRASpec:
    rank: int = 4  # r; the LoRA paper's GPT-2 E2E setting
    alpha: float = 32.0  # scaling = alpha / rank
    dropout: float = 0.0  # dropout on the LoRA branch input x (not on the frozen path)
    targets: list[str] = field(default_factory=lambda: ["q", "v"])  # roles: q k v o ffn_in ffn_gate ffn_out | qkv
    layers: list[int] | None = None  # layer indices per stack (negative = from the end); null = all
    stacks: list[str] | None = None  # encoder / decoder; null = all stacks
    attention: list[str] = field(default_factory=lambda: list(ATTENTION_KINDS))  # self / cross


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
    mergeable = True

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
