"""peftrun's LoRA against the `peft` library: same outputs with the same A and B, and the peft layout both ways.

Tolerance: logits atol 1e-5 (fp32; both compute W0 x + (alpha/r) B(A(x)), in different module structures).
"""

from __future__ import annotations

import json

import pytest
import torch
from methods_tiny import FAMILIES, batch, logits, method, randomize_lora, tiny

from peftrun.errors import PeftrunError
from peftrun.methods import apply_method, load_method, load_peft, save_peft

peft = pytest.importorskip("peft")

# Roles per family that peft can express (GPT-2: the whole fused c_attn, not q/v slices of it).
PEFT_ROLES = {"gpt2": ["qkv", "ffn_out"], "bart": ["q", "v", "ffn_in"], "t5": ["q", "k", "o"], "bert": ["q", "v"],
              "llama": ["q", "k", "v", "o", "ffn_in", "ffn_gate", "ffn_out"]}  # llama: GQA k/v, gated FFN
ATOL = 1e-5


def _peft_model(family, target_modules, rank=4, alpha=8.0, init=True):
    config = peft.LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=target_modules,
                             fan_in_fan_out=family == "gpt2", init_lora_weights=init)
    return peft.get_peft_model(tiny(family).model, config).eval()


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_logits_equal_peft_with_the_same_A_and_B(family):
    bb = tiny(family)
    inputs = batch(bb)
    applied = apply_method(bb.model, bb.anatomy, method({"kind": "lora", "rank": 4, "alpha": 8.0,
                                                          "targets": PEFT_ROLES[family]}))
    randomize_lora(applied)
    (lora,) = applied.deltas.values()
    reference = _peft_model(family, sorted({s.path for s in lora.sites}))
    peft_params = dict(reference.named_parameters())
    copied = 0
    with torch.no_grad():
        for site in lora.sites:
            for name in ("lora_A", "lora_B"):
                target = peft_params[f"base_model.model.{site.path}.{name}.default.weight"]
                target.copy_(getattr(lora.pairs[site.key], name).weight)
                copied += 1
    assert copied == sum(1 for n in peft_params if ".lora_" in n)  # every peft LoRA tensor came from peftrun
    torch.testing.assert_close(logits(bb.model, inputs), logits(reference, inputs), atol=ATOL, rtol=0)
    assert (logits(bb.model, inputs) - logits(tiny(family).model, inputs)).abs().max() > 1e-3


@pytest.mark.parametrize("family", FAMILIES)
def test_peftrun_lora_loads_in_peft(family, tmp_path):
    bb = tiny(family)
    inputs = batch(bb)
    applied = apply_method(bb.model, bb.anatomy, method({"kind": "lora", "rank": 4, "alpha": 16.0,
                                                          "targets": PEFT_ROLES[family], "layers": [-1]}))
    randomize_lora(applied)
    save_peft(applied, tmp_path)
    loaded = peft.PeftModel.from_pretrained(tiny(family).model, tmp_path).eval()
    lora_tensors = [n for n in dict(loaded.named_parameters()) if ".lora_" in n]
    assert len(lora_tensors) == 2 * len(applied.deltas["lora"].sites)
    torch.testing.assert_close(logits(loaded, inputs), logits(bb.model, inputs), atol=ATOL, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_peft_lora_loads_in_peftrun(family, tmp_path):
    suffixes = {"gpt2": ["c_attn"], "bart": ["q_proj", "v_proj"], "t5": ["q", "v"], "bert": ["query", "value"],
                "llama": ["q_proj", "v_proj"]}
    reference = _peft_model(family, suffixes[family], rank=2, alpha=4.0, init=False)  # init=False: random B
    reference.save_pretrained(tmp_path)
    bb = tiny(family)
    inputs = batch(bb)
    applied = load_method(bb.model, bb.anatomy, tmp_path)  # recognises the peft layout
    (lora,) = applied.deltas.values()
    assert lora.spec.rank == 2 and lora.scaling == 2.0
    assert sorted(lora.spec.targets) == (["qkv"] if family == "gpt2" else ["q", "v"])
    torch.testing.assert_close(logits(bb.model, inputs), logits(reference, inputs), atol=ATOL, rtol=0)
    assert (logits(bb.model, inputs) - logits(tiny(family).model, inputs)).abs().max() > 1e-3


def test_peft_layout_round_trip_through_peftrun(tmp_path):
    bb = tiny("bart")
    applied = apply_method(bb.model, bb.anatomy, method({"kind": "lora", "targets": ["q", "v"],
                                                          "attention": ["cross"], "stacks": ["decoder"]}))
    randomize_lora(applied)
    save_peft(applied, tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["task_type"] == "SEQ_2_SEQ_LM"
    assert config["target_modules"] == [f"model.decoder.layers.{i}.encoder_attn.{p}_proj" for i in (0, 1)
                                        for p in ("q", "v")]
    fresh = tiny("bart")
    reloaded = load_peft(fresh.model, fresh.anatomy, tmp_path)
    spec = reloaded.deltas["lora"].spec
    assert (spec.stacks, spec.attention, spec.targets) == (["decoder"], ["cross"], ["q", "v"])
    inputs = batch(bb)
    assert torch.equal(logits(fresh.model, inputs), logits(bb.model, inputs))


def test_gpt2_slices_of_the_fused_qkv_are_refused_by_the_peft_layout(tmp_path):
    bb = tiny("gpt2")
    applied = apply_method(bb.model, bb.anatomy, method({"kind": "lora", "targets": ["q", "v"]}))
    with pytest.raises(PeftrunError, match=r"peft cannot express LoRA on the \['q', 'v'\] slices.*targets=\[qkv\]"):
        save_peft(applied, tmp_path)


def test_peft_layout_refuses_other_deltas_and_peft_features(tmp_path):
    bb = tiny("bert")
    applied = apply_method(bb.model, bb.anatomy, method({"kind": "lora"}, train="bias"))
    with pytest.raises(PeftrunError, match="train=bias"):
        save_peft(applied, tmp_path)
    reference = _peft_model("bert", ["query"])
    reference.peft_config["default"].use_rslora = True
    reference.save_pretrained(tmp_path / "rs")
    fresh = tiny("bert")
    with pytest.raises(PeftrunError, match="use_rslora"):
        load_peft(fresh.model, fresh.anatomy, tmp_path / "rs")


def test_peft_lora_on_a_module_that_is_no_role_is_refused(tmp_path):
    reference = _peft_model("bert", ["query", "cls.predictions.transform.dense"])
    reference.save_pretrained(tmp_path)
    fresh = tiny("bert")
    with pytest.raises(PeftrunError, match="no role"):
        load_peft(fresh.model, fresh.anatomy, tmp_path)
