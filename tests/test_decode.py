"""The lean greedy loop (peftrun.decode) gives model.generate's tokens, and generate_ids picks it only where it may.

Tiny random backbones repeat one token forever and never stop, which would exercise neither the cache nor the
row dropping. So every weight is scaled up (varied continuations that depend on the prompt), and a hook on the
LM head makes EOS the top logit wherever the model's own top token is a multiple of STOP_EVERY: rows then end
at different steps, decided by their own logits (the hook acts the same under both decoders).
"""

from __future__ import annotations

import os

import pytest
import torch
from omegaconf import OmegaConf

from peftrun.backbones import load_backbone
from peftrun.config import BackboneConfig, GenerationConfig, PathsConfig
from peftrun.data import pad_left, pad_right, tokenize_examples
from peftrun.decode import continuous_greedy_decode, greedy_decode, greedy_kwargs
from peftrun.errors import PeftrunError
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


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("family", ["gpt2", "bart", "t5"])
def test_lean_greedy_tokens_equal_generate(family: str, method: str) -> None:
    backbone = tiny(family)
    ids, mask = batch(backbone)
    settings = settings_for(backbone, min_new_tokens=2)
    handle = stop_hook(backbone)
    base = generate_reference(backbone, ids, mask, **settings)
    with_method(backbone, method)
    expected = generate_reference(backbone, ids, mask, **settings)
    kwargs = greedy_kwargs(backbone.model, settings)
    assert kwargs is not None
    got = greedy_decode(backbone.model, backbone.anatomy.kind, ids, mask, **kwargs)
    handle.remove()
    assert got == expected
    eos = backbone.tokenizer.eos_token_id
    lengths = [len(row) for row in got]
    ended_early = [n for n, row in zip(lengths, got, strict=True) if n < MAX_NEW and row[-1] == eos]
    assert ended_early and max(lengths) > min(ended_early), lengths  # a row left the batch, others went on
    assert min(lengths) > 2  # min_new_tokens held EOS back
    assert len({tuple(row[:-1]) for row in got}) > 2  # continuations depend on the prompt
    if method != "none":
        assert got != base  # the delta changes the tokens, so its hooks ran in the lean loop


@pytest.mark.parametrize("family", ["gpt2", "bart"])
def test_lean_greedy_length_rules_equal_generate(family: str) -> None:
    """min_length (counting the prompt for decoder-only), forced BOS / EOS and suppress_tokens, from the model's
    generation config and from the call."""
    backbone = tiny(family)
    model = backbone.model
    ids, mask = batch(backbone)
    config = model.generation_config
    if family == "bart":
        config.forced_bos_token_id = 5
        config.min_length = 4
    else:
        config.min_length = ids.shape[1] + 3
    settings = settings_for(backbone, suppress_tokens=[7, 11], forced_eos_token_id=backbone.tokenizer.eos_token_id)
    handle = stop_hook(backbone)
    expected = generate_reference(backbone, ids, mask, **settings)
    kwargs = greedy_kwargs(model, settings)
    assert kwargs is not None
    got = greedy_decode(model, backbone.anatomy.kind, ids, mask, **kwargs)
    handle.remove()
    assert got == expected
    assert all(len(row) >= 4 for row in got)
    if family == "bart":
        assert all(row[0] == 5 for row in got)
    assert all(row[-1] == backbone.tokenizer.eos_token_id for row in got if len(row) == MAX_NEW)


@pytest.mark.parametrize("family", ["gpt2", "bart", "t5"])
def test_generate_ids_auto_equals_hf(family: str) -> None:
    """The runner's path, batched (padding) and one prompt per batch (no padding: generate drops the mask)."""
    backbone = tiny(family)
    kind = backbone.anatomy.kind
    prompts = tokenize_examples(EXAMPLES, backbone.tokenizer, kind, 64, 64, None, with_target=False).input_ids
    handle = stop_hook(backbone)
    for batch_size in (4, 1):
        results = {}
        for decoder in ("auto", "hf"):
            gen = OmegaConf.structured(GenerationConfig(max_new_tokens=MAX_NEW, batch_size=batch_size, decoder=decoder))
            results[decoder] = generate_ids(backbone.model, backbone.tokenizer, kind, prompts, gen, min_new_tokens=1)
        assert results["auto"] == results["hf"]
    handle.remove()


class Spy:
    """Counts calls of model.generate and of the lean loop, passing through."""

    def __init__(self, backbone, monkeypatch) -> None:
        import peftrun.generate as module

        self.hf = self.lean = 0
        model_generate, lean = backbone.model.generate, module.greedy_decode

        def count_hf(*args, **kwargs):
            self.hf += 1
            return model_generate(*args, **kwargs)

        def count_lean(*args, **kwargs):
            self.lean += 1
            return lean(*args, **kwargs)

        monkeypatch.setattr(backbone.model, "generate", count_hf)
        monkeypatch.setattr(module, "greedy_decode", count_lean)


def run(backbone, gen_kwargs: dict, **generate_kwargs) -> None:
    kind = backbone.anatomy.kind
    prompts = tokenize_examples(EXAMPLES[:2], backbone.tokenizer, kind, 64, 64, None, with_target=False).input_ids
    gen = OmegaConf.structured(GenerationConfig(max_new_tokens=3, batch_size=2, **gen_kwargs))
    generate_ids(backbone.model, backbone.tokenizer, kind, prompts, gen, **generate_kwargs)


@pytest.mark.parametrize("case,gen_kwargs,generate_kwargs,lean", [
    ("greedy", {}, {}, True),
    ("greedy with min_new_tokens and suppress_tokens", {}, {"min_new_tokens": 2, "suppress_tokens": [3]}, True),
    ("beam search", {"num_beams": 2}, {}, False),
    ("no-repeat n-grams", {"no_repeat_ngram_size": 2}, {}, False),
    ("repetition penalty", {}, {"repetition_penalty": 1.3}, False),
    ("no KV cache", {}, {"use_cache": False}, False),
    ("decoder=hf", {"decoder": "hf"}, {}, False),
])
def test_generate_ids_picks_the_lean_loop_only_where_it_applies(monkeypatch, case, gen_kwargs, generate_kwargs,
                                                                 lean) -> None:
    backbone = tiny("gpt2")
    spy = Spy(backbone, monkeypatch)
    run(backbone, gen_kwargs, **generate_kwargs)
    assert (spy.lean, spy.hf) == ((1, 0) if lean else (0, 1)), case


def test_a_model_generation_config_with_an_unsupported_processor_goes_to_generate(monkeypatch) -> None:
    backbone = tiny("bart")
    backbone.model.generation_config.no_repeat_ngram_size = 3  # as bart-large's; the runner overrides it with 0
    backbone.model.generation_config.encoder_no_repeat_ngram_size = 2
    spy = Spy(backbone, monkeypatch)
    run(backbone, {})
    assert (spy.lean, spy.hf) == (0, 1)


@pytest.mark.parametrize("family,delta", [
    ("gpt2", {"kind": "prompt_tuning", "length": 3}),
    ("t5", {"kind": "ptuning", "template": "[P][P] {x} [P] {y}"}),
])
def test_soft_prompts_go_to_generate(monkeypatch, family: str, delta: dict) -> None:
    backbone = tiny(family)
    apply_method(backbone.model, backbone.anatomy, {"name": delta["kind"], "train": "none", "top_k": 0,
                                                    "deltas": [delta]}, tokenizer=backbone.tokenizer)
    spy = Spy(backbone, monkeypatch)
    run(backbone, {})
    assert (spy.lean, spy.hf) == (0, 1)


def test_an_unknown_decoder_is_a_user_error() -> None:
    with pytest.raises(PeftrunError, match="task.generation.decoder='fast'.*auto, hf"):
        run(tiny("gpt2"), {"decoder": "fast"})


@pytest.mark.parametrize("method", list(METHODS))
def test_continuous_greedy_tokens_equal_generate_per_prompt(method: str) -> None:
    """More prompts than the batch: rows end at different steps, freed slots are refilled from the queue (one at
    a time with refill_at=1, in groups by default), and every prompt's tokens equal generate on that prompt alone
    and generate on its length-sorted batch."""
    backbone = tiny("gpt2")
    tok = backbone.tokenizer
    with_method(backbone, method)
    prompts = tokenize_examples(EXAMPLES + EXAMPLES[::-1][:4], tok, "decoder", 64, 64, None,
                                with_target=False).input_ids
    prompts[-4:] = [p[1:] for p in prompts[-4:]]  # distinct prompts, more lengths
    handle = stop_hook(backbone)
    for extra in ({"min_new_tokens": 2}, {"suppress_tokens": [7, 11], "forced_eos_token_id": tok.eos_token_id}):
        settings = settings_for(backbone, **extra)
        expected = [generate_reference(backbone, torch.tensor([p]), torch.ones(1, len(p), dtype=torch.long),
                                       **settings)[0] for p in prompts]
        kwargs = greedy_kwargs(backbone.model, settings)
        assert kwargs is not None
        for batch_size, refill_at in ((4, 1), (4, None), (3, 2), (16, None)):
            finished: list[int] = []
            got = continuous_greedy_decode(
                backbone.model, prompts, batch_size, kwargs["max_new_tokens"], kwargs["eos_token_id"],
                kwargs["pad_token_id"], kwargs["min_new_tokens"], suppress_tokens=kwargs["suppress_tokens"],
                forced_eos_token_id=kwargs["forced_eos_token_id"], refill_at=refill_at, on_done=finished.append)
            assert got == expected, (extra, batch_size, refill_at)
            assert sum(finished) == len(prompts)
        lengths = [len(row) for row in got]
        assert min(lengths) < MAX_NEW and max(lengths) > min(lengths), lengths  # rows ended at different steps
        assert len({tuple(row[:-1]) for row in got}) > 4  # continuations depend on the prompt
        if "min_new_tokens" in extra:
            assert min(lengths) > 2
        else:
            assert all(row[-1] == tok.eos_token_id for row in got)  # forced EOS at the last step
            assert not {7, 11} & {t for row in got for t in row}
    gen = OmegaConf.structured(GenerationConfig(max_new_tokens=MAX_NEW, batch_size=3))
    runner = generate_ids(backbone.model, tok, "decoder", prompts, gen, min_new_tokens=2)
    hf = generate_ids(backbone.model, tok, "decoder", prompts, OmegaConf.merge(gen, {"decoder": "hf"}),
                      min_new_tokens=2)
    handle.remove()
    assert runner == hf


def test_generate_ids_uses_the_continuous_loop_for_several_decoder_batches(monkeypatch) -> None:
    import peftrun.generate as module

    backbone = tiny("gpt2")
    spy = Spy(backbone, monkeypatch)
    calls = []
    original = module.continuous_greedy_decode
    monkeypatch.setattr(module, "continuous_greedy_decode", lambda *a, **k: calls.append(1) or original(*a, **k))
    kind = backbone.anatomy.kind
    prompts = tokenize_examples(EXAMPLES, backbone.tokenizer, kind, 64, 64, None, with_target=False).input_ids
    gen = OmegaConf.structured(GenerationConfig(max_new_tokens=3, batch_size=2))
    generate_ids(backbone.model, backbone.tokenizer, kind, prompts, gen)
    assert (len(calls), spy.lean, spy.hf) == (1, 0, 0)
    backbone.model.generation_config.min_length = 5  # depends on the padded batch width: per-batch loop
    generate_ids(backbone.model, backbone.tokenizer, kind, prompts, gen)
    assert (len(calls), spy.lean, spy.hf) == (1, 3, 0)
