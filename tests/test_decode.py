"""The lean greedy loops (peftrun.decode) give model.generate's tokens, and generate_ids picks them only where they
may (tiny models and the EOS rule: tests/decoding_tiny.py)."""

from __future__ import annotations

import pytest
from decoding_tiny import (
    EXAMPLES,
    MAX_NEW,
    METHODS,
    Spy,
    batch,
    generate_reference,
    run,
    settings_for,
    stop_hook,
    tiny,
    with_method,
)
from omegaconf import OmegaConf

from peftrun.config import GenerationConfig
from peftrun.data import tokenize_examples
from peftrun.decode import greedy_decode, greedy_kwargs
from peftrun.errors import PeftrunError
from peftrun.generate import generate_ids


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


@pytest.mark.parametrize("case,gen_kwargs,generate_kwargs,loop", [
    ("greedy", {}, {}, "lean"),
    ("greedy with min_new_tokens and suppress_tokens", {}, {"min_new_tokens": 2, "suppress_tokens": [3]}, "lean"),
    ("beam search", {"num_beams": 2}, {}, "beam"),
    ("beam search, length penalty, no-repeat n-grams", {"num_beams": 3, "length_penalty": 0.9,
                                                        "no_repeat_ngram_size": 2}, {}, "beam"),
    ("beam search without early stopping", {"num_beams": 2}, {"early_stopping": "never"}, "beam"),
    ("greedy no-repeat n-grams", {"no_repeat_ngram_size": 2}, {}, "hf"),
    ("repetition penalty", {}, {"repetition_penalty": 1.3}, "hf"),
    ("beam search, repetition penalty", {"num_beams": 2}, {"repetition_penalty": 1.3}, "hf"),
    ("beam sampling", {"num_beams": 2}, {"do_sample": True}, "hf"),
    ("no KV cache", {}, {"use_cache": False}, "hf"),
    ("decoder=hf", {"decoder": "hf"}, {}, "hf"),
    ("beam search, decoder=hf", {"decoder": "hf", "num_beams": 2}, {}, "hf"),
])
def test_generate_ids_picks_the_lean_loops_only_where_they_apply(monkeypatch, case, gen_kwargs, generate_kwargs,
                                                                  loop) -> None:
    backbone = tiny("gpt2")
    spy = Spy(backbone, monkeypatch)
    run(backbone, gen_kwargs, **generate_kwargs)
    assert {"lean": spy.lean, "beam": spy.beam, "hf": spy.hf} == {name: int(name == loop) for name in
                                                                   ("lean", "beam", "hf")}, case


def test_a_model_generation_config_with_an_unsupported_processor_goes_to_generate(monkeypatch) -> None:
    backbone = tiny("bart")
    backbone.model.generation_config.no_repeat_ngram_size = 3  # as bart-large's; the runner overrides it with 0
    backbone.model.generation_config.encoder_no_repeat_ngram_size = 2
    spy = Spy(backbone, monkeypatch)
    run(backbone, {})
    run(backbone, {"num_beams": 2})
    assert (spy.lean, spy.beam, spy.hf) == (0, 0, 2)


def test_an_unknown_decoder_is_a_user_error() -> None:
    with pytest.raises(PeftrunError, match="task.generation.decoder='fast'.*auto, hf"):
        run(tiny("gpt2"), {"decoder": "fast"})
