"""Which backbone parameters stay trainable (MethodConfig.train).

    none   nothing of the backbone (only the deltas train)
    all    everything (full fine-tuning)
    head   parameters outside the base model (`model.base_model_prefix`), e.g. a classifier; an LM head
           tied to the input embeddings is *inside* (it is the embedding matrix)
    bias   BitFit (Ben Zaken et al. 2022): every bias term of the backbone (attention, FFN, LayerNorm), plus
           the head, as the paper trains the task classifier too
    top_k  the last `top_k` layers of each stack, plus the head (the LoRA paper's FT-Top2 baseline)
"""

from __future__ import annotations

from torch import nn

from peftrun.backbones.anatomy import Anatomy

TRAIN_RULES = ("none", "all", "head", "bias", "top_k")


def head_parameter_names(model: nn.Module, anatomy: Anatomy) -> set[str]:
    """Names of parameters outside the base model.

    Most heads sit beside `getattr(model, model.base_model_prefix)`; T5ForConditionalGeneration has no such
    attribute (its stacks sit at the root), so there the head is the anatomy's `lm_head`.
    """
    names = {name for name, _ in model.named_parameters()}
    prefix = getattr(model, "base_model_prefix", "")
    base = getattr(model, prefix, None) if prefix else None
    if isinstance(base, nn.Module) and base is not model:
        return {n for n in names if not n.startswith(prefix + ".")}
    if anatomy.lm_head is None:
        return set()
    return {n for n in names if n.startswith(anatomy.lm_head + ".")}


def top_k_parameter_names(model: nn.Module, anatomy: Anatomy, k: int) -> set[str]:
    """Names of the parameters of the last `k` layers of every stack."""
    chosen = set()
    for stack, index, layer in anatomy.iter_layers(model):
        count = len(anatomy.layers(model, stack.name))
        if index >= count - k:
            chosen |= {f"{stack.layers}.{index}.{n}" for n, _ in layer.named_parameters()}
    return chosen


def trainable_backbone_names(model: nn.Module, anatomy: Anatomy, rule: str, top_k: int = 0) -> set[str]:
    """Backbone parameter names that `rule` leaves trainable (names as in `model.named_parameters()`)."""
    names = {name for name, _ in model.named_parameters()}
    if rule == "none":
        return set()
    if rule == "all":
        return names
    head = head_parameter_names(model, anatomy)
    if rule == "head":
        return head
    if rule == "bias":
        return head | {n for n in names if n.rsplit(".", 1)[-1] == "bias"}
    if rule == "top_k":
        return head | (top_k_parameter_names(model, anatomy, top_k) & names)
    raise ValueError(f"unknown train rule {rule!r} (allowed: {', '.join(TRAIN_RULES)})")


def set_trainable(model: nn.Module, names: set[str]) -> None:
    """requires_grad = (name in names) for every parameter of `model` (call before deltas are attached)."""
    for name, param in model.named_parameters():
        param.requires_grad_(name in names)
