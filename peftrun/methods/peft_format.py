"""LoRA in peft's on-disk layout, both ways.

    adapter_config.json          peft's LoraConfig fields (peft_type "LORA", r, lora_alpha, target_modules ...)
    adapter_model.safetensors    "base_model.model.<module path>.lora_A.weight" [r, in] and ".lora_B.weight" [out, r]

`save_peft` writes the exact module paths as `target_modules` (peft matches a key equal to a target), so
`PeftModel.from_pretrained(base, directory)` rebuilds the same LoRA. `load_peft` reads a peft LoRA
directory: it finds the modules peft's matching rule selects, maps each to its role through the anatomy,
and re-expresses the set as a peftrun LoRA spec (targets, layers, stacks, attention kinds). What one side
cannot express is an error: peftrun's per-slice LoRA on GPT-2's fused c_attn (peft adapts the whole
c_attn), or a peft LoRA on a module that is no role, with per-module ranks, DoRA, rsLoRA, trained biases.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from peftrun.backbones.anatomy import Anatomy
from peftrun.errors import PeftrunError
from peftrun.methods.lora import LoRA
from peftrun.methods.sites import PROJECTION_ROLES, QKV_PARTS, Site, select_sites

if TYPE_CHECKING:
    from peftrun.methods.applied import AppliedMethod

PEFT_PREFIX = "base_model.model."


def _task_type(model: nn.Module) -> str | None:
    name = type(model).__name__
    if name.endswith(("ForCausalLM", "LMHeadModel")):
        return "CAUSAL_LM"
    if name.endswith(("ForConditionalGeneration", "ForSeq2SeqLM")):
        return "SEQ_2_SEQ_LM"
    return None


def save_peft(applied: AppliedMethod, directory: str | os.PathLike) -> Path:
    """Write `applied` (one LoRA delta, train=none) in peft's layout; PeftrunError where peft cannot express it."""
    from peftrun.methods.applied import CONFIG_NAME, WEIGHTS_NAME, write_json_atomic, write_safetensors_atomic

    deltas = list(applied.deltas.values())
    if len(deltas) != 1 or not isinstance(deltas[0], LoRA):
        kinds = [d.kind for d in deltas]
        raise PeftrunError(f"the peft layout holds one LoRA delta, this method has {kinds}; use save() instead")
    if applied.method["train"] != "none":
        raise PeftrunError(
            f"method.train={applied.method['train']} also trains backbone tensors, which peft's LoRA layout does "
            "not hold; use save() instead"
        )
    lora = deltas[0]
    sliced = sorted({s.role for s in lora.sites if s.part is not None})
    if sliced:
        raise PeftrunError(
            f"peft cannot express LoRA on the {sliced} slices of {applied.anatomy.family}'s fused qkv projection "
            "(peft adapts the whole c_attn); train with targets=[qkv] for a peft-compatible LoRA, or use save()"
        )
    tensors = {}
    for site in lora.sites:
        pair = lora.pairs[site.key]
        tensors[f"{PEFT_PREFIX}{site.path}.lora_A.weight"] = pair.lora_A.weight
        tensors[f"{PEFT_PREFIX}{site.path}.lora_B.weight"] = pair.lora_B.weight
    spec = lora.spec
    config = {
        "peft_type": "LORA",
        "task_type": _task_type(applied.model),
        "base_model_name_or_path": getattr(getattr(applied.model, "config", None), "_name_or_path", None) or None,
        "r": spec.rank,
        "lora_alpha": spec.alpha,
        "lora_dropout": spec.dropout,
        "target_modules": sorted({site.path for site in lora.sites}),
        "fan_in_fan_out": applied.anatomy.conv1d_projections,
        "bias": "none",
        "use_rslora": False,
        "use_dora": False,
        "modules_to_save": None,
        "init_lora_weights": True,
        "layers_to_transform": None,
        "layers_pattern": None,
        "rank_pattern": {},
        "alpha_pattern": {},
        "inference_mode": True,
    }
    directory = Path(directory)
    write_safetensors_atomic(directory / WEIGHTS_NAME, tensors)
    write_json_atomic(directory / CONFIG_NAME, config)
    return directory


# ------------------------------------------------------------------------------------------------- loading

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


def load_peft(model: nn.Module, anatomy: Anatomy, directory: str | os.PathLike) -> AppliedMethod:
    """Apply a peft LoRA directory to a fresh base `model` as a peftrun LoRA (same outputs as PeftModel)."""
    from safetensors.torch import load_file

    from peftrun.methods.applied import CONFIG_NAME, WEIGHTS_NAME, apply_method

    directory = Path(directory)
    with open(directory / CONFIG_NAME) as handle:
        config = json.load(handle)
    if config.get("peft_type") != "LORA":
        raise PeftrunError(f"{directory}: peft_type={config.get('peft_type')!r}; only peft LORA adapters load here")
    for key, off in _UNSUPPORTED.items():
        if key in config and config[key] not in off:
            raise PeftrunError(
                f"{directory}: peft option {key}={config[key]!r} has no peftrun LoRA equivalent "
                f"(supported: {off[0]!r}); re-train without it or load it with peft"
            )
    fused = any(a.qkv is not None for s in anatomy.stacks for a in s.attentions)
    roles = [r for r in PROJECTION_ROLES if not (fused and r in QKV_PARTS) and not (not fused and r == "qkv")]
    candidates = {s.path: s for s in select_sites(model, anatomy, roles)}
    matched = _matched_modules(model, config)
    strays = [name for name in matched if name not in candidates]
    if strays:
        raise PeftrunError(
            f"{directory}: peft LoRA targets {strays[:3]}, which are no role of the {anatomy.family} anatomy "
            f"(roles: {', '.join(roles)}); peftrun cannot attach LoRA there"
        )
    if not matched:
        raise PeftrunError(f"{directory}: target_modules={config.get('target_modules')!r} matches no module")
    sites = [candidates[name] for name in matched]
    selection = _spec_from_sites(sites, anatomy, model)
    item = {"kind": "lora", "rank": int(config["r"]), "alpha": float(config["lora_alpha"]),
            "dropout": float(config.get("lora_dropout") or 0.0), **selection}
    method = {"name": "lora", "train": "none", "top_k": 0, "rank": item["rank"], "alpha": item["alpha"],
              "dropout": item["dropout"], "targets": selection["targets"], "layers": selection["layers"],
              "deltas": [item]}
    expected = {s.path for s in select_sites(model, anatomy, selection["targets"], selection["stacks"],
                                             selection["attention"], selection["layers"])}
    if expected != set(matched):
        raise PeftrunError(
            f"{directory}: the peft targets {sorted(set(matched) - expected or expected - set(matched))[:3]} are not a "
            "(roles x layers x stacks x attention kinds) selection peftrun's LoRA spec can express"
        )
    applied = apply_method(model, anatomy, method)
    tensors = load_file(str(directory / WEIGHTS_NAME), device=str(next(model.parameters()).device))
    (lora,) = applied.deltas.values()
    state = {}
    for site in lora.sites:
        for name in ("lora_A", "lora_B"):
            key = f"{PEFT_PREFIX}{site.path}.{name}.weight"
            if key not in tensors:
                raise PeftrunError(f"{directory}: {WEIGHTS_NAME} lacks {key!r} (a truncated or foreign checkpoint?)")
            state[f"pairs.{site.key}.{name}.weight"] = tensors.pop(key)
    if tensors:
        raise PeftrunError(f"{directory}: unexpected tensors {sorted(tensors)[:3]} in {WEIGHTS_NAME}")
    try:
        lora.load_saved_state_dict(state)
    except RuntimeError as err:  # shape mismatch: an adapter of another architecture
        raise PeftrunError(f"{directory}: LoRA tensors do not fit this model ({str(err).splitlines()[-1].strip()})") from err
    return applied
