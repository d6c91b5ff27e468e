"""Helpers of the method tests: the shared tiny backbones (peftrun.backbones), inputs, logits, snapshots."""

from __future__ import annotations

import os
from typing import Any

import torch

from peftrun.backbones.load import Backbone, load_backbone
from peftrun.config import BackboneConfig, PathsConfig


def tiny_families() -> tuple[str, ...]:
    """Every registered backbone family with a tiny offline backbone, in registration order (the registry, not a
    hand-written list: a new family is tested by every test parametrized over this)."""
    from peftrun.backbones.families import FAMILIES as REGISTERED
    from peftrun.backbones.tiny import TINY_CONFIGS

    return tuple(name for name in REGISTERED if name in TINY_CONFIGS)


FAMILIES = tiny_families()


def tiny(family: str, head: str = "lm", num_labels: int | None = None) -> Backbone:
    """A fresh tiny backbone (same seeded weights every call), in eval mode."""
    cfg = BackboneConfig(name=f"tiny-{family}", family=family, source="tiny")
    paths = PathsConfig(cache_dir=os.environ["PEFTRUN_CACHE_DIR"])
    backbone = load_backbone(cfg, paths, head=head, num_labels=num_labels)
    backbone.model.eval()
    return backbone


def batch(backbone: Backbone, seed: int = 0, batch_size: int = 2, length: int = 7) -> dict[str, torch.Tensor]:
    """Random token ids (+ decoder ids for encoder-decoders) and LM labels."""
    gen = torch.Generator().manual_seed(seed)
    vocab = backbone.model.config.vocab_size
    ids = torch.randint(5, vocab, (batch_size, length), generator=gen)
    inputs: dict[str, Any] = {"input_ids": ids, "labels": ids.clone()}
    if backbone.anatomy.is_encoder_decoder:
        inputs["labels"] = torch.randint(5, vocab, (batch_size, length - 2), generator=gen)
    return inputs


def logits(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def method(*deltas: dict[str, Any], train: str = "none", top_k: int = 0, name: str = "test") -> dict[str, Any]:
    """A method config as a plain dict (what a composed MethodConfig resolves to)."""
    return {"name": name, "train": train, "top_k": top_k, "deltas": list(deltas)}


def randomize_lora(applied: Any, seed: int = 1, std: float = 0.05) -> None:
    """Give every LoRA B (zero at init) random values so the update is non-trivial."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for delta in applied.deltas.values():
            for name, p in delta.named_parameters():
                if "lora_" in name:
                    p.copy_(torch.randn(p.shape, generator=gen) * std)


def generate_with_and_without_cache(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor, beams: int) -> tuple[Any, dict[str, Any]]:
    """Generate 6 tokens with the KV cache and without; assert equal tokens and step scores (atol 1e-4).

    Returns the cached output (sequences + scores) and the generate settings, for further checks."""
    settings = {"input_ids": ids, "attention_mask": mask, "max_new_tokens": 6, "min_new_tokens": 6,
                "num_beams": beams, "do_sample": False, "pad_token_id": model.config.pad_token_id,
                "return_dict_in_generate": True, "output_scores": True}
    cached = model.generate(**settings, use_cache=True)
    uncached = model.generate(**settings, use_cache=False)
    assert cached.sequences.tolist() == uncached.sequences.tolist()
    for step_cached, step_uncached in zip(cached.scores, uncached.scores, strict=True):
        torch.testing.assert_close(step_cached, step_uncached, atol=1e-4, rtol=1e-4)
    return cached, settings
