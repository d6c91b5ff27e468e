"""peftrun's beam search (peftrun.beam) gives model.generate's tokens, with the papers' settings, on every family,
with LoRA, prefix-tuning and soft prompts; hypotheses end at different steps (the EOS rule of decoding_tiny), and
batch rows whose hypotheses are final leave the batch."""

from __future__ import annotations

import pytest
import torch
from decoding_tiny import (
    EXAMPLES,
    MAX_NEW,
    METHODS,
    Spy,
    batch,
    generate_reference,
    settings_for,
    stop_hook,
    tiny,
    with_method,
)
from omegaconf import OmegaConf

from peftrun.beam import ban_repeated_ngrams, beam_decode, beam_kwargs
from peftrun.config import GenerationConfig
from peftrun.data import tokenize_examples
from peftrun.generate import generate_ids
from peftrun.methods import apply_method

SEARCHES = {  # the papers' decoding (E2E in LoRA's setup; Li & Liang), and generate's other stopping rules
    "e2e": {"num_beams": 10, "length_penalty": 0.9, "no_repeat_ngram_size": 4, "early_stopping": True},
    "li-liang": {"num_beams": 5, "early_stopping": True},
    "heuristic": {"num_beams": 3, "length_penalty": 1.3, "no_repeat_ngram_size": 2, "early_stopping": False,
                  "min_new_tokens": 2},
    "never": {"num_beams": 4, "length_penalty": 0.8, "early_stopping": "never"},
}


class RowCounter:
    """Rows the LM head sees per call (one call per decoding step)."""

    def __init__(self, backbone) -> None:
        self.rows: list[int] = []
        head = backbone.model.get_output_embeddings()
        self.handle = head.register_forward_hook(lambda _m, args, _out: self.rows.append(args[0].shape[0]))


def lean_beam(backbone, ids, mask, settings) -> list[list[int]]:
    kwargs = beam_kwargs(backbone.model, settings)
    assert kwargs is not None
    return beam_decode(backbone.model, backbone.anatomy.kind, ids, mask, **kwargs)


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("family", ["gpt2", "bart", "t5"])
def test_beam_tokens_equal_generate(family: str, method: str) -> None:
    backbone = tiny(family)
    ids, mask = batch(backbone)
    handle = stop_hook(backbone)
    base = lean_beam(backbone, ids, mask, settings_for(backbone, **SEARCHES["li-liang"]))
    with_method(backbone, method)
    retired, varied = False, False
    for name, search in SEARCHES.items():
        settings = settings_for(backbone, **search)
        expected = generate_reference(backbone, ids, mask, **settings)
        counter = RowCounter(backbone)
        got = lean_beam(backbone, ids, mask, settings)
        counter.handle.remove()
        assert got == expected, name
        beams, width = search["num_beams"], ids.shape[0] * search["num_beams"]
        assert counter.rows[0] == ids.shape[0]  # the prefill runs once per prompt, not per beam
        assert all(rows % beams == 0 and rows <= width for rows in counter.rows[1:])
        retired |= min(counter.rows[1:]) < width and len(counter.rows) > 2
        lengths = [len(row) for row in got]
        varied |= min(lengths) < max(lengths) and len({tuple(row) for row in got}) > 2  # ended at different steps
        if name == "li-liang" and method != "none":
            assert got != base  # the delta changes the tokens, so its hooks ran in the loop
    handle.remove()
    assert varied and retired  # hypotheses ended at different steps, and a batch row left while others searched on


@pytest.mark.parametrize("family", ["gpt2", "bart"])
def test_beam_length_rules_equal_generate(family: str) -> None:
    """min_length, forced BOS / EOS and suppress_tokens with beams, from the model's config and from the call."""
    backbone = tiny(family)
    ids, mask = batch(backbone)
    config = backbone.model.generation_config
    if family == "bart":
        config.forced_bos_token_id = 5
        config.min_length = 4
    else:
        config.min_length = ids.shape[1] + 3
    eos = backbone.tokenizer.eos_token_id
    handle = stop_hook(backbone)
    settings = settings_for(backbone, suppress_tokens=[7, 11], forced_eos_token_id=eos, **SEARCHES["li-liang"])
    expected = generate_reference(backbone, ids, mask, **settings)
    got = lean_beam(backbone, ids, mask, settings)
    handle.remove()
    assert got == expected
    assert all(len(row) >= 4 for row in got)
    assert all(row[-1] == eos for row in got if len(row) == MAX_NEW)
    if family == "bart":
        assert all(row[0] == 5 for row in got)


def test_a_logits_bias_that_ends_some_rows_early_retires_them() -> None:
    """A bias on EOS for the first two prompts only (a model wrapper's hook, applied under both decoders): those
    rows finish in a step or two, the others search on with fewer rows in the batch."""
    backbone = tiny("gpt2")
    ids, mask = batch(backbone)
    eos = backbone.tokenizer.eos_token_id
    beams = SEARCHES["e2e"]["num_beams"]

    def bias(_module, _args, logits):
        logits = logits.clone()
        rows = logits.shape[0] // ids.shape[0]  # 1 on a prefill of one row per prompt, else beams per prompt
        favoured = torch.arange(logits.shape[0]) // rows < 2 if logits.shape[0] in (ids.shape[0], ids.shape[0] * beams) \
            else torch.zeros(logits.shape[0], dtype=torch.bool)
        logits[favoured, ..., eos] += 50.0
        return logits

    settings = settings_for(backbone, **SEARCHES["e2e"])
    handle = backbone.model.get_output_embeddings().register_forward_hook(bias)
    expected = generate_reference(backbone, ids, mask, **settings)
    counter = RowCounter(backbone)
    got = lean_beam(backbone, ids, mask, settings)
    handle.remove()
    counter.handle.remove()
    assert got == expected
    assert got[0] == [eos] and got[1] == [eos] and all(len(row) == MAX_NEW for row in got[2:])
    assert counter.rows[1] == ids.shape[0] * beams and counter.rows[2] == (ids.shape[0] - 2) * beams


@pytest.mark.parametrize("family,delta", [
    ("gpt2", {"kind": "prompt_tuning", "length": 3}),
    ("gpt2", {"kind": "ptuning", "template": "[P][P] {x} [P] {y}"}),
    ("t5", {"kind": "ptuning", "template": "[P][P] {x} [P] {y}"}),
    ("bart", {"kind": "prompt_tuning", "length": 3}),
])
def test_soft_prompts_run_in_the_lean_loops(monkeypatch, family: str, delta: dict) -> None:
    """Prompt tuning / P-tuning: their hooks rewrite inputs_embeds on the prefill and extend the mask after; the
    per-batch loops call the model as generate does (the continuous loop is not used: its cache merging would not
    count the virtual tokens). Tokens equal decoder=hf's through the runner's path, greedy and beam."""
    backbone = tiny(family)
    apply_method(backbone.model, backbone.anatomy, {"name": delta["kind"], "train": "none", "top_k": 0,
                                                    "deltas": [delta]}, tokenizer=backbone.tokenizer)
    kind = backbone.anatomy.kind
    prompts = tokenize_examples(EXAMPLES, backbone.tokenizer, kind, 64, 64, None, with_target=False).input_ids
    handle = stop_hook(backbone)
    for search in ({"num_beams": 1}, {"num_beams": 4, "length_penalty": 0.9, "no_repeat_ngram_size": 2}):
        gen = OmegaConf.structured(GenerationConfig(max_new_tokens=MAX_NEW, batch_size=4, **search))
        hf = generate_ids(backbone.model, backbone.tokenizer, kind, prompts, OmegaConf.merge(gen, {"decoder": "hf"}))
        spy = Spy(backbone, monkeypatch)
        auto = generate_ids(backbone.model, backbone.tokenizer, kind, prompts, gen)
        monkeypatch.undo()
        assert auto == hf, search
        assert (spy.lean, spy.beam, spy.hf) == ((2, 0, 0) if search["num_beams"] == 1 else (0, 2, 0))
    handle.remove()


@pytest.mark.parametrize("family", ["gpt2", "bart", "t5"])
def test_generate_ids_beam_auto_equals_hf(family: str) -> None:
    """The runner's path (its early_stopping=True), batched with padding and one prompt per batch."""
    backbone = tiny(family)
    kind = backbone.anatomy.kind
    prompts = tokenize_examples(EXAMPLES, backbone.tokenizer, kind, 64, 64, None, with_target=False).input_ids
    handle = stop_hook(backbone)
    for batch_size in (4, 1):
        results = {}
        for decoder in ("auto", "hf"):
            gen = OmegaConf.structured(GenerationConfig(max_new_tokens=MAX_NEW, batch_size=batch_size, decoder=decoder,
                                                        num_beams=5, length_penalty=0.9, no_repeat_ngram_size=4))
            results[decoder] = generate_ids(backbone.model, backbone.tokenizer, kind, prompts, gen)
        assert results["auto"] == results["hf"]
    handle.remove()


def test_ban_repeated_ngrams_bans_what_would_repeat() -> None:
    history = torch.tensor([[1, 2, 3, 1, 2], [4, 4, 4, 4, 4]])
    scores = ban_repeated_ngrams(history, torch.zeros(2, 6), 3)
    assert scores[0].isinf().nonzero().flatten().tolist() == [3]  # 1 2 3 occurred: after "1 2", 3 is banned
    assert scores[1].isinf().nonzero().flatten().tolist() == [4]
    assert not ban_repeated_ngrams(history, torch.zeros(2, 6), 6).isinf().any()  # no complete 6-gram yet
