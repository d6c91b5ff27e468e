"""Continuous greedy decoding (peftrun.continuous): finished rows leave, waiting prompts join, for decoder-only and
encoder-decoder models; every prompt's tokens equal model.generate's on that prompt alone (tiny models and the
EOS rule: tests/decoding_tiny.py)."""

from __future__ import annotations

import pytest
import torch
from decoding_tiny import (
    EXAMPLES,
    MAX_NEW,
    METHODS,
    Spy,
    generate_reference,
    settings_for,
    stop_hook,
    tiny,
    with_method,
)
from omegaconf import OmegaConf

from peftrun.config import GenerationConfig
from peftrun.continuous import continuous_greedy_decode
from peftrun.data import tokenize_examples
from peftrun.decode import greedy_kwargs
from peftrun.generate import generate_ids
from peftrun.methods import apply_method

FAMILIES = ["gpt2", "bart", "t5"]  # learned absolute positions (per-row ids / the position hook), relative (T5)


def prompts_for(backbone) -> list[list[int]]:
    kind = backbone.anatomy.kind
    prompts = tokenize_examples(EXAMPLES + EXAMPLES[::-1][:4], backbone.tokenizer, kind, 64, 64, None,
                                with_target=False).input_ids
    prompts[-4:] = [p[1:] for p in prompts[-4:]]  # distinct prompts, more lengths
    return prompts


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("family", FAMILIES)
def test_continuous_greedy_tokens_equal_generate_per_prompt(family: str, method: str) -> None:
    """More prompts than the batch: rows end at different steps, freed slots are refilled from the queue (one at
    a time with refill_at=1, in groups by default), and every prompt's tokens equal generate on that prompt alone
    and generate on its length-sorted batch. Encoder-decoders also take min_length and forced BOS per row."""
    backbone = tiny(family)
    tok = backbone.tokenizer
    kind = backbone.anatomy.kind
    with_method(backbone, method)
    prompts = prompts_for(backbone)
    handle = stop_hook(backbone)
    rules = {"suppress_tokens": [7, 11], "forced_eos_token_id": tok.eos_token_id}
    if kind == "encoder-decoder":
        rules.update(forced_bos_token_id=5, min_length=3)
    for extra in ({"min_new_tokens": 2}, rules):
        settings = settings_for(backbone, **extra)
        expected = [generate_reference(backbone, torch.tensor([p]), torch.ones(1, len(p), dtype=torch.long),
                                       **settings)[0] for p in prompts]
        kwargs = greedy_kwargs(backbone.model, settings)
        assert kwargs is not None
        for batch_size, refill_at in ((4, 1), (4, None), (3, 2), (16, None)):
            finished: list[int] = []
            got = continuous_greedy_decode(backbone.model, prompts, batch_size, kind=kind, refill_at=refill_at,
                                           on_done=finished.append, **kwargs)
            assert got == expected, (extra, batch_size, refill_at)
            assert sum(finished) == len(prompts)
        lengths = [len(row) for row in got]
        assert min(lengths) < MAX_NEW and max(lengths) > min(lengths), lengths  # rows ended at different steps
        if "min_new_tokens" in extra:
            assert min(lengths) > 2
            assert len({tuple(row[:-1]) for row in got}) > 4  # continuations depend on the prompt
        else:
            assert all(row[-1] == tok.eos_token_id for row in got)  # forced EOS at the last step
            assert not {7, 11} & {t for row in got for t in row}
            if kind == "encoder-decoder":
                assert all(row[0] == 5 for row in got) and min(lengths) >= 2
    gen = OmegaConf.structured(GenerationConfig(max_new_tokens=MAX_NEW, batch_size=3))
    runner = generate_ids(backbone.model, tok, kind, prompts, gen, min_new_tokens=2)
    hf = generate_ids(backbone.model, tok, kind, prompts, OmegaConf.merge(gen, {"decoder": "hf"}), min_new_tokens=2)
    handle.remove()
    assert runner == hf


class ContinuousSpy(Spy):
    def __init__(self, backbone, monkeypatch) -> None:
        import peftrun.generate as module

        super().__init__(backbone, monkeypatch)
        self.continuous = 0
        original = module.continuous_greedy_decode

        def counted(*args, **kwargs):
            self.continuous += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(module, "continuous_greedy_decode", counted)

    def counts(self) -> tuple[int, int, int]:
        return self.continuous, self.lean, self.hf


@pytest.mark.parametrize("family", FAMILIES)
def test_generate_ids_uses_the_continuous_loop_for_several_batches(monkeypatch, family: str) -> None:
    backbone = tiny(family)
    spy = ContinuousSpy(backbone, monkeypatch)
    kind = backbone.anatomy.kind
    prompts = tokenize_examples(EXAMPLES, backbone.tokenizer, kind, 64, 64, None, with_target=False).input_ids
    gen = OmegaConf.structured(GenerationConfig(max_new_tokens=3, batch_size=2))
    generate_ids(backbone.model, backbone.tokenizer, kind, prompts, gen)
    assert spy.counts() == (1, 0, 0)
    backbone.model.generation_config.min_length = 5  # decoder-only: depends on the padded batch width
    generate_ids(backbone.model, backbone.tokenizer, kind, prompts, gen)
    assert spy.counts() == ((1, 3, 0) if kind == "decoder" else (2, 0, 0))


def test_a_decoder_without_per_row_positions_uses_the_per_batch_loop(monkeypatch) -> None:
    import peftrun.continuous as continuous

    backbone = tiny("bart")
    monkeypatch.setattr(continuous, "_position_table", lambda model: None)  # as a decoder of unknown positions
    spy = ContinuousSpy(backbone, monkeypatch)
    prompts = tokenize_examples(EXAMPLES, backbone.tokenizer, "encoder-decoder", 64, 64, None,
                                with_target=False).input_ids
    generate_ids(backbone.model, backbone.tokenizer, "encoder-decoder", prompts,
                 OmegaConf.structured(GenerationConfig(max_new_tokens=3, batch_size=2)))
    assert spy.counts() == (0, 3, 0)


@pytest.mark.parametrize("family", ["gpt2", "t5"])
def test_a_soft_prompt_uses_the_per_batch_loop(monkeypatch, family: str) -> None:
    """Its virtual tokens sit in the cache, which the continuous loop's merging does not count."""
    backbone = tiny(family)
    apply_method(backbone.model, backbone.anatomy, {"name": "prompt_tuning", "train": "none", "top_k": 0,
                                                    "deltas": [{"kind": "prompt_tuning", "length": 3}]})
    spy = ContinuousSpy(backbone, monkeypatch)
    kind = backbone.anatomy.kind
    prompts = tokenize_examples(EXAMPLES, backbone.tokenizer, kind, 64, 64, None, with_target=False).input_ids
    generate_ids(backbone.model, backbone.tokenizer, kind, prompts,
                 OmegaConf.structured(GenerationConfig(max_new_tokens=3, batch_size=2)))
    assert spy.counts() == (0, 3, 0)
