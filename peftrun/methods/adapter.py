"""Bottleneck adapters, sequential (Houlsby et al. 2019; Pfeiffer et al. 2021) or parallel (He et al. 2022).

    f(z)       = W_up act(W_down LN?(z) + b_down) + b_up          W_down: [m, d], W_up: [d, m]
    sequential: h' = h + c(f(h))     h = sublayer output (output of role o / ffn_out, before the residual)
    parallel:   h' = h + c(f(x))     x = sublayer input  (input of role q or the fused qkv / ffn_in)
    composition c: add  c(u) = u;  scaled  c(u) = s u;  gated  c(u) = sigmoid(w_g . z + b_g) u  (token-wise
                   gate on the adapter input z, w_g and b_g learned; as UniPELT's gating)

Houlsby = sequential after the attention and the FFN sublayers (targets [attn, ffn]); Pfeiffer = after
the FFN only (targets [ffn]); the scaled parallel adapter of He et al. = parallel, composition scaled, s=4.

Init (`init`):
  houlsby  W_down, W_up ~ truncated normal (std `init_std`, cut at 2 std), zero biases: near-identity; the
           default std 1e-3 is adapter-bert's (google-research/adapter-bert `feedforward_adapter`, init_scale=1e-3)
  lora     W_down kaiming-uniform(a=sqrt(5)), W_up and biases zero: exactly the base model at step 0 (He et
           al.'s parallel adapters use this LoRA-style init)
The adapter enters through forward hooks (pre-hook caching the sublayer input for parallel), removed by detach.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import torch
from torch import nn

from peftrun.backbones.anatomy import Anatomy, get_module
from peftrun.errors import PeftrunError
from peftrun.methods.adapter_spec import AdapterSpec
from peftrun.methods.base import Delta, register_delta
from peftrun.methods.sites import Sublayer, check_selection, projection_shape, select_sublayers

SUBLAYERS = ("attn", "ffn")
INSERTIONS = ("sequential", "parallel")
COMPOSITIONS = ("add", "scaled", "gated")
ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU}
INITS = ("houlsby", "lora")


class BottleneckAdapter(nn.Module):
    """f(z) (see module docstring) plus the composition; `forward(z, h)` returns h + c(f(z))."""

    def __init__(self, d: int, spec: AdapterSpec, like: torch.Tensor) -> None:
        super().__init__()
        m = spec.bottleneck if spec.bottleneck is not None else max(1, int(d // spec.reduction_factor))
        kw = {"device": like.device, "dtype": like.dtype}
        self.layer_norm = nn.LayerNorm(d, **kw) if spec.layer_norm else nn.Identity()
        self.down = nn.Linear(d, m, **kw)
        self.act = ACTIVATIONS[spec.activation]()
        self.dropout = nn.Dropout(spec.dropout) if spec.dropout > 0 else nn.Identity()
        self.up = nn.Linear(m, d, **kw)
        self.gate = nn.Linear(d, 1, **kw) if spec.composition == "gated" else None
        self.composition = spec.composition
        self.scale = spec.scale
        with torch.no_grad():
            nn.init.zeros_(self.down.bias)
            nn.init.zeros_(self.up.bias)
            if spec.init == "houlsby":
                for w in (self.down.weight, self.up.weight):
                    nn.init.trunc_normal_(w, std=spec.init_std, a=-2 * spec.init_std, b=2 * spec.init_std)
            else:
                nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
                nn.init.zeros_(self.up.weight)
            if self.gate is not None:
                nn.init.zeros_(self.gate.weight)
                nn.init.zeros_(self.gate.bias)

    def forward(self, z: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        u = self.up(self.dropout(self.act(self.down(self.layer_norm(z)))))
        if self.composition == "scaled":
            u = u * self.scale
        elif self.composition == "gated":
            u = u * torch.sigmoid(self.gate(z))
        return h + u


@register_delta("adapter")
class Adapter(Delta):
    spec_class = AdapterSpec

    def __init__(self, spec: AdapterSpec, anatomy: Anatomy) -> None:
        super().__init__(spec, anatomy)
        self.adapters = nn.ModuleDict()  # sublayer.key -> BottleneckAdapter
        self.sublayers: list[Sublayer] = []
        self._handles: list[Any] = []
        self._inputs: dict[str, torch.Tensor] = {}  # parallel: sublayer input cached by the pre-hook

    @classmethod
    def supports(cls, spec: AdapterSpec, anatomy: Anatomy) -> str | None:
        choices = {"insertion": INSERTIONS, "composition": COMPOSITIONS, "activation": tuple(ACTIVATIONS),
                   "init": INITS}
        for key, allowed in choices.items():
            if getattr(spec, key) not in allowed:
                return f"{key}={getattr(spec, key)!r} (allowed: {', '.join(allowed)})"
        if not spec.targets or any(t not in SUBLAYERS for t in spec.targets):
            return f"targets={spec.targets} (adapter targets are sublayers: {', '.join(SUBLAYERS)})"
        if spec.bottleneck is None and spec.reduction_factor is None:
            return "bottleneck=None and reduction_factor=None: set one (e.g. bottleneck=64 or reduction_factor=16)"
        if spec.bottleneck is not None and spec.bottleneck <= 0:
            return f"bottleneck={spec.bottleneck}; must be a positive integer"
        if spec.reduction_factor is not None and spec.reduction_factor <= 0:
            return f"reduction_factor={spec.reduction_factor}; must be positive"
        if not 0.0 <= spec.dropout < 1.0:
            return f"dropout={spec.dropout}; must be in [0, 1)"
        if spec.init == "houlsby" and spec.init_std <= 0:
            return f"init_std={spec.init_std}; must be positive for init=houlsby"
        return check_selection(anatomy, spec.stacks, spec.attention, spec.layers, "attn" in spec.targets)

    def attach(self, model: nn.Module) -> None:
        s = self.spec
        self.sublayers = select_sublayers(model, self.anatomy, s.targets, s.stacks, s.attention, s.layers)
        if not self.sublayers:
            raise PeftrunError(f"adapter targets={s.targets} selects no sublayer of this model; fix targets/layers")
        for sub in self.sublayers:
            out_module = get_module(model, sub.output_path)
            _, d, _ = projection_shape(out_module)
            self.adapters[sub.key] = BottleneckAdapter(d, s, out_module.weight)
            if s.insertion == "parallel":
                in_module = get_module(model, sub.input_path)
                self._handles.append(in_module.register_forward_pre_hook(self._cache_input(sub.key), with_kwargs=True))
            self._handles.append(out_module.register_forward_hook(self._add_output(sub.key), with_kwargs=True))

    def detach(self, model: nn.Module) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._inputs.clear()

    def _cache_input(self, key: str):
        def pre_hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            self._inputs[key] = args[0] if args else next(iter(kwargs.values()))

        return pre_hook

    def _add_output(self, key: str):
        adapter = self.adapters[key]
        parallel = self.spec.insertion == "parallel"

        def hook(module: nn.Module, args: tuple, kwargs: dict, output: torch.Tensor) -> torch.Tensor:
            if not parallel:
                return adapter(output, output)
            if key not in self._inputs:
                raise RuntimeError(f"parallel adapter {key}: the sublayer output came before its input was seen")
            return adapter(self._inputs.pop(key), output)

        return hook

    def per_role_counts(self) -> dict[str, int]:
        counts: dict[str, int] = defaultdict(int)
        for sub in self.sublayers:
            counts[sub.kind] += sum(p.numel() for p in self.adapters[sub.key].parameters())
        return dict(counts)
