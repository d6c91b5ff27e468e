"""Prefix-tuning, prompt tuning and P-tuning in peft's layout, both ways (LoRA: tests/test_lora_peft.py).

Export: `PeftModel.from_pretrained` on the folder `save_peft` wrote gives peftrun's logits (atol 1e-5, fp32;
peft prepends the virtual tokens, so a decoder-only model's peft logits carry n extra leading rows, dropped
here). Import: `load_peft` on that folder gives back the saved tensors exactly, and on a folder peft itself
saved gives peft's logits. Rows have no left padding (peft puts virtual tokens before the padding, peftrun
after it).
"""

from __future__ import annotations

import json

import pytest
import torch
from methods_tiny import batch, logits, method, tiny

from peftrun.errors import PeftrunError
from peftrun.methods import apply_method, load_method, load_peft, save_peft

peft = pytest.importorskip("peft")
ATOL = 1e-5
DELTAS = {
    "prompt_tuning": {"kind": "prompt_tuning", "length": 3, "init": "random"},
    "ptuning_lstm": {"kind": "ptuning", "template": "[P][P][P][P] {x}", "encoder": "lstm"},
    "ptuning_mlp": {"kind": "ptuning", "template": "[P][P] {x}", "encoder": "mlp", "mid_dim": 8},
    "prefix_mlp": {"kind": "prefix", "length": 3, "mid_dim": 8},
    "prefix_plain": {"kind": "prefix", "length": 2, "mid_dim": None},
}
CASES = [(name, family) for name in DELTAS for family in ("gpt2", "bart", "t5")
         if not (name.startswith("prefix") and family != "gpt2")]


def _virtual_rows(item: dict, family: str) -> int:
    """Leading rows of peft's decoder-only logits that belong to virtual tokens (none for a prefix)."""
    if family != "gpt2" or item["kind"] == "prefix":
        return 0
    return item.get("length") or item["template"].count("[P]")


@pytest.mark.parametrize(("name", "family"), CASES)
def test_export_loads_in_peft_with_equal_logits_and_imports_back(name, family, tmp_path):
    item = DELTAS[name]
    bb = tiny(family)
    inputs = batch(bb)
    applied = apply_method(bb.model, bb.anatomy, method(item))
    expected = logits(bb.model, inputs)
    assert (expected - logits(tiny(family).model, inputs)).abs().max() > 1e-4  # the delta changes the output
    save_peft(applied, tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["peft_type"] == applied.deltas[item["kind"]].spec_class.peft_type
    loaded = peft.PeftModel.from_pretrained(tiny(family).model, tmp_path).eval()
    got = logits(loaded, inputs)[:, _virtual_rows(item, family):]
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)

    fresh = tiny(family)
    back = load_peft(fresh.model, fresh.anatomy, tmp_path)
    (original,), (reloaded,) = applied.deltas.values(), back.deltas.values()
    saved, again = original.saved_state_dict(), reloaded.saved_state_dict()
    assert saved.keys() == again.keys() and all(torch.equal(saved[k], again[k]) for k in saved)
    torch.testing.assert_close(logits(fresh.model, inputs), expected, atol=ATOL, rtol=0)


PEFT_CONFIGS = {
    "prompt_tuning": lambda task: peft.PromptTuningConfig(task_type=task, num_virtual_tokens=3),
    "ptuning": lambda task: peft.PromptEncoderConfig(task_type=task, num_virtual_tokens=3, encoder_hidden_size=8),
    "prefix": lambda task: peft.PrefixTuningConfig(task_type=task, num_virtual_tokens=3, prefix_projection=True,
                                                   encoder_hidden_size=8),
}


@pytest.mark.parametrize(("kind", "family"), [(k, f) for k in PEFT_CONFIGS for f in ("gpt2", "bart", "t5")
                                              if not (k == "prefix" and f != "gpt2")])
def test_folder_saved_by_peft_loads_in_peftrun_with_peft_logits(kind, family, tmp_path):
    task = "CAUSAL_LM" if family == "gpt2" else "SEQ_2_SEQ_LM"
    torch.manual_seed(0)
    reference = peft.get_peft_model(tiny(family).model, PEFT_CONFIGS[kind](task)).eval()
    reference.save_pretrained(tmp_path)
    reference = peft.PeftModel.from_pretrained(tiny(family).model, tmp_path).eval()  # what the folder means
    bb = tiny(family)
    inputs = batch(bb)
    applied = load_method(bb.model, bb.anatomy, tmp_path)  # recognises the peft layout
    assert [d.kind for d in applied.deltas.values()] == [kind]
    virtual = 3 if family == "gpt2" and kind != "prefix" else 0
    torch.testing.assert_close(logits(bb.model, inputs), logits(reference, inputs)[:, virtual:], atol=ATOL, rtol=0)


@pytest.mark.parametrize("family", ["bart", "t5"])
def test_encoder_decoder_prefix_is_refused_both_ways_with_the_reason(family, tmp_path):
    bb = tiny(family)
    applied = apply_method(bb.model, bb.anatomy, method(DELTAS["prefix_mlp"]))
    with pytest.raises(PeftrunError, match="decoder-only models, not a encoder-decoder"):
        save_peft(applied, tmp_path)
    peft.get_peft_model(tiny(family).model, PEFT_CONFIGS["prefix"]("SEQ_2_SEQ_LM")).save_pretrained(tmp_path)
    fresh = tiny(family)
    with pytest.raises(PeftrunError, match="peft prefix-tuning: .*encoder-decoder"):
        load_peft(fresh.model, fresh.anatomy, tmp_path)


def test_what_peft_cannot_express_is_refused(tmp_path):
    bb = tiny("gpt2")
    anchored = apply_method(bb.model, bb.anatomy, method({"kind": "ptuning", "template": "[P] {x} [P] {y}"}))
    with pytest.raises(PeftrunError, match=r"before the input.*after \{x\}"):
        save_peft(anchored, tmp_path)
    for item, reason in [({"kind": "prefix", "length": 2, "layers": [-1]}, "every layer"),
                         ({"kind": "prefix", "length": 2, "shift_positions": False}, "shift_positions=false"),
                         ({"kind": "prefix", "length": 2, "composition": "gated"}, "composition=gated"),
                         ({"kind": "adapter"}, "one delta of a kind peft has")]:
        applied = apply_method(tiny("gpt2").model, bb.anatomy, method(item))
        with pytest.raises(PeftrunError, match=reason):
            save_peft(applied, tmp_path)
