"""Tiny models and references shared by the decoding tests (test_decode, test_beam).

Tiny random backbones repeat one token forever and never stop, which would exercise neither the cache nor the
row dropping. So every weight is scaled up (varied continuations that depend on the prompt), and a hook on the
LM head makes EOS the top logit wherever the model's own top token is a multiple of STOP_EVERY: rows (and beam
hypotheses) then end at different steps, decided by their own logits (the hook acts the same under every decoder).
"""

from __future__ import annotations

import os

import torch
from omegaconf import OmegaConf

from peftrun.backbones import load_backbone
from peftrun.config import BackboneConfig, GenerationConfig, PathsConfig
from peftrun.data import pad_left, pad_right, tokenize_examples
from peftrun.generate import generate_ids
from peftrun.methods import apply_method
from peftrun.tasks.base import Example

SOURCES = [
    "name : The Eagle | food : French | area : riverside | priceRange : high",
    "name : Aromi | Type : coffee shop",
    "name : Zizzi",
    "name : Cotto | near : The Bakers | familyFriendly : yes",
    "area : city centre | food : Indian",
    "name : Blue Spice | eatType : pub",
]
EXAMPLES = [Example(id=str(i), source=s, target="", references=("",)) for i, s in enumerate(SOURCES)]
MAX_NEW = 10
STOP_EVERY = 4
SCALE = {"gpt2": 3.0, "bart": 4.0, "t5": 3.0}  # per family: enough for prompt-dependent, varied continuations
METHODS = {
    "none": None,
    "lora": {"kind": "lora", "rank": 2, "alpha": 4.0, "targets": ["q", "v"]},
    "prefix": {"kind": "prefix", "length": 3, "mid_dim": 8},
}


def tiny(family: str):
    cfg = OmegaConf.structured(BackboneConfig(name=f"tiny-{family}", family=family, source="tiny"))
    backbone = load_backbone(cfg, OmegaConf.structured(PathsConfig(cache_dir=os.environ["PEFTRUN_CACHE_DIR"])))
    with torch.no_grad():
        for param in backbone.model.parameters():
            param.mul_(SCALE[family])
    backbone.model.eval()
    return backbone


def with_method(backbone, method: str) -> None:
    if METHODS[method] is None:
        return
    apply_method(backbone.model, backbone.anatomy, {"name": method, "train": "none", "top_k": 0,
                                                    "deltas": [METHODS[method]]})
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in backbone.model.named_parameters():
            if "lora_B" in name:  # zero-init B would make the LoRA a no-op
                param.normal_(0.0, 1.0)


def stop_hook(backbone):
    """EOS becomes the top logit where the top token id is a multiple of STOP_EVERY (see module docstring)."""
    eos = backbone.tokenizer.eos_token_id

    def hook(_module, _args, logits):
        top = logits.argmax(-1, keepdim=True)
        boosted = torch.where(top % STOP_EVERY == 0, logits.amax(-1, keepdim=True) + 1.0, logits[..., eos:eos + 1])
        logits = logits.clone()
        logits[..., eos:eos + 1] = boosted
        return logits

    return backbone.model.get_output_embeddings().register_forward_hook(hook)


def batch(backbone):
    kind = backbone.anatomy.kind
    prompts = tokenize_examples(EXAMPLES, backbone.tokenizer, kind, 64, 64, None, with_target=False).input_ids
    assert len({len(p) for p in prompts}) > 2
    pad = backbone.tokenizer.pad_token_id
    return pad_left(prompts, pad) if kind == "decoder" else pad_right(prompts, pad)


def generate_reference(backbone, ids, mask, **settings) -> list[list[int]]:
    """model.generate's new tokens per row, through the first EOS (what follows is padding)."""
    eos = backbone.tokenizer.eos_token_id
    out = backbone.model.generate(input_ids=ids, attention_mask=mask, **settings)
    out = out[:, ids.shape[1]:] if backbone.anatomy.kind == "decoder" else out[:, 1:]
    rows = []
    for row in out.tolist():
        rows.append(row[: row.index(eos) + 1] if eos in row else row)
    return rows


def settings_for(backbone, **extra):
    tok = backbone.tokenizer
    return {"num_beams": 1, "do_sample": False, "max_new_tokens": MAX_NEW, "pad_token_id": tok.pad_token_id,
            "eos_token_id": tok.eos_token_id, **extra}


class Spy:
    """Counts calls of model.generate (hf), of the per-batch greedy loop (lean) and of beam_decode (beam), passing
    through."""

    def __init__(self, backbone, monkeypatch) -> None:
        import peftrun.generate as module

        self.hf = self.lean = self.beam = 0
        model_generate, lean, beam = backbone.model.generate, module.greedy_decode, module.beam_decode

        def count(name, function):
            def counted(*args, **kwargs):
                setattr(self, name, getattr(self, name) + 1)
                return function(*args, **kwargs)
            return counted

        monkeypatch.setattr(backbone.model, "generate", count("hf", model_generate))
        monkeypatch.setattr(module, "greedy_decode", count("lean", lean))
        monkeypatch.setattr(module, "beam_decode", count("beam", beam))


def run(backbone, gen_kwargs: dict, **generate_kwargs) -> None:
    kind = backbone.anatomy.kind
    prompts = tokenize_examples(EXAMPLES[:2], backbone.tokenizer, kind, 64, 64, None, with_target=False).input_ids
    gen = OmegaConf.structured(GenerationConfig(max_new_tokens=3, batch_size=2, **gen_kwargs))
    generate_ids(backbone.model, backbone.tokenizer, kind, prompts, gen, **generate_kwargs)


