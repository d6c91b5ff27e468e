"""Deltas on the tiny families: identity at init, one step moves only the deltas, merge, save/load.

Tolerances: "exact" = torch.equal under torch.no_grad (a zero update adds exactly 0.0); merged vs unmerged
logits atol 1e-5 (fp32, W0 x + s B A x vs (W0 + s B A) x reorders the sums); unmerge restores W0 to atol 1e-6.
"""

from __future__ import annotations

import json

import pytest
import torch
from methods_tiny import FAMILIES, batch, logits, method, randomize_lora, snapshot, tiny

from peftrun.errors import PeftrunError
from peftrun.methods import apply_method, load_method

ALL_ROLES = {"gpt2": ["qkv", "o", "ffn_in", "ffn_out"], "bart": ["q", "k", "v", "o", "ffn_in", "ffn_out"],
             "t5": ["q", "k", "v", "o", "ffn_in", "ffn_out"], "bert": ["q", "k", "v", "o", "ffn_in", "ffn_out"],
             "llama": ["q", "k", "v", "o", "ffn_in", "ffn_gate", "ffn_out"]}


def lora(**kw):
    return {"kind": "lora", "rank": 4, "alpha": 8.0, "dropout": 0.0, **kw}


def adapter(**kw):
    return {"kind": "adapter", "bottleneck": 8, **kw}


IDENTITY_DELTAS = {
    "lora_all_roles": lambda fam: lora(targets=ALL_ROLES[fam]),
    "lora_q_v": lambda fam: lora(targets=["q", "v"]),  # GPT-2: slices of the fused c_attn
    "seq_adapter_zero_up": lambda fam: adapter(insertion="sequential", init="lora"),
    "par_adapter_scaled": lambda fam: adapter(insertion="parallel", init="lora", composition="scaled", scale=4.0),
    "par_adapter_gated_ln": lambda fam: adapter(insertion="parallel", init="lora", composition="gated",
                                                layer_norm=True, activation="gelu"),
}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("delta", sorted(IDENTITY_DELTAS))
def test_zero_update_at_init_equals_base(family, delta):
    bb = tiny(family)
    inputs = batch(bb)
    base = logits(bb.model, inputs)
    applied = apply_method(bb.model, bb.anatomy, method(IDENTITY_DELTAS[delta](family)))
    assert applied.param_report()["trainable"] > 0
    assert torch.equal(logits(bb.model, inputs), base)
    applied.remove()
    assert not hasattr(bb.model, "peftrun_deltas")
    assert torch.equal(logits(bb.model, inputs), base)


def test_houlsby_init_is_near_identity_not_identity():
    bb = tiny("bart")
    inputs = batch(bb)
    base = logits(bb.model, inputs)
    apply_method(bb.model, bb.anatomy, method(adapter(insertion="sequential", init="houlsby", init_std=1e-3)))
    diff = (logits(bb.model, inputs) - base).abs().max().item()
    assert 0.0 < diff < 1e-2  # std 1e-3 weights: a small, non-zero change


def _train_steps(model, inputs, steps=2, lr=1e-2):
    """AdamW over ALL parameters: frozen ones have no grad, so AdamW must skip them."""
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    for _ in range(steps):
        optimizer.zero_grad()
        model(**inputs).loss.backward()
        optimizer.step()
    model.eval()


STEP_DELTAS = {
    "lora": lambda fam: lora(targets=ALL_ROLES[fam], dropout=0.1),
    "lora_q_v": lambda fam: lora(targets=["q", "v"]),
    "adapter_seq": lambda fam: adapter(insertion="sequential", init="houlsby"),
    "adapter_par_gated": lambda fam: adapter(insertion="parallel", init="houlsby", composition="gated"),
}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("delta", sorted(STEP_DELTAS))
def test_training_step_moves_only_delta_parameters(family, delta):
    bb = tiny(family)
    before = snapshot(bb.model)
    applied = apply_method(bb.model, bb.anatomy, method(STEP_DELTAS[delta](family)))
    delta_before = {n: p.detach().clone() for n, p in applied.deltas.named_parameters()}
    _train_steps(bb.model, batch(bb))
    for name, param in bb.model.named_parameters():
        if name in before:
            assert torch.equal(param, before[name]), f"frozen backbone tensor {name} changed"
    moved = [n for n, p in applied.deltas.named_parameters() if not torch.equal(p, delta_before[n])]
    assert sorted(moved) == sorted(delta_before), f"delta tensors that did not move: {set(delta_before) - set(moved)}"


@pytest.mark.parametrize("family", ["gpt2", "bart"])  # tied LM heads; BERT's MLM head is a separate head (below)
def test_bitfit_moves_only_biases(family):
    bb = tiny(family)
    before = snapshot(bb.model)
    applied = apply_method(bb.model, bb.anatomy, method(train="bias"))
    report = applied.param_report()
    biases = {n for n in before if n.endswith(".bias")}
    assert report["trainable"] == sum(before[n].numel() for n in biases)  # tied LM heads add nothing
    _train_steps(bb.model, batch(bb))
    changed = {n for n, p in bb.model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= biases
    assert len(changed) >= 0.9 * len(biases)  # (a few biases, e.g. attention key biases, get ~zero gradient)


def test_bitfit_with_a_classifier_also_trains_the_head_only():
    bb = tiny("bert", head="classification", num_labels=3)
    before = snapshot(bb.model)
    apply_method(bb.model, bb.anatomy, method(train="bias"))
    inputs = batch(bb)
    inputs["labels"] = torch.tensor([0, 2])
    _train_steps(bb.model, inputs)
    changed = {n for n, p in bb.model.named_parameters() if not torch.equal(p, before[n])}
    assert {"classifier.weight", "classifier.bias"} <= changed
    assert changed <= {n for n in before if n.endswith(".bias") or n.startswith("classifier.")}


@pytest.mark.parametrize("family", ["t5", "llama"])
def test_bitfit_on_a_bias_free_family_is_refused_before_loading(family):
    from peftrun.backbones.families import anatomy_for
    from peftrun.methods import validate_method

    with pytest.raises(PeftrunError, match=rf"^method.train=bias \(BitFit\) .* but {family} has none; [^\n]*$"):
        validate_method(method(train="bias"), anatomy_for(family))  # the anatomy alone: no model loaded


def test_top_k_trains_the_last_layers_of_each_stack():
    bb = tiny("bart")
    applied = apply_method(bb.model, bb.anatomy, method(train="top_k", top_k=1))
    names = {n for n, p in bb.model.named_parameters() if p.requires_grad}
    assert names and all(n.startswith(("model.encoder.layers.1.", "model.decoder.layers.1.")) for n in names)
    expected = sum(p.numel() for p in bb.model.model.encoder.layers[1].parameters()) + sum(
        p.numel() for p in bb.model.model.decoder.layers[1].parameters())
    assert applied.param_report()["trainable"] == expected


@pytest.mark.parametrize("family", FAMILIES)
def test_merge_equals_unmerged_and_unmerge_restores(family):
    bb = tiny(family)
    inputs = batch(bb)
    original = snapshot(bb.model)
    targets = ["q", "v", "o", "ffn_out"] if family == "gpt2" else ALL_ROLES[family]
    applied = apply_method(bb.model, bb.anatomy, method(lora(targets=targets)))
    randomize_lora(applied)
    unmerged = logits(bb.model, inputs)
    assert (unmerged - logits(tiny(family).model, inputs)).abs().max() > 1e-3  # the update is not trivial
    applied.merge()
    changed = [n for n, p in bb.model.named_parameters() if n in original and not torch.equal(p, original[n])]
    assert changed  # the weights now hold the update ...
    torch.testing.assert_close(logits(bb.model, inputs), unmerged, atol=1e-5, rtol=0)  # ... and hooks add nothing
    applied.unmerge()
    for name, param in bb.model.named_parameters():
        if name in original:
            torch.testing.assert_close(param, original[name], atol=1e-6, rtol=0)
    torch.testing.assert_close(logits(bb.model, inputs), unmerged, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", ["gpt2", "t5"])
def test_export_merged_is_a_plain_transformers_model_with_the_same_outputs(family, tmp_path):
    bb = tiny(family)
    inputs = batch(bb)
    applied = apply_method(bb.model, bb.anatomy, method(lora(targets=["q", "v"])))
    randomize_lora(applied)
    expected = logits(bb.model, inputs)
    applied.export_merged(tmp_path / "merged")
    assert not applied.deltas["lora"].merged  # the in-memory model is unmerged again
    exported = type(bb.model).from_pretrained(tmp_path / "merged").eval()
    assert not any("lora" in n or "peftrun" in n for n, _ in exported.named_parameters())
    torch.testing.assert_close(logits(exported, inputs), expected, atol=1e-5, rtol=0)


def test_adapters_cannot_be_merged():
    bb = tiny("gpt2")
    applied = apply_method(bb.model, bb.anatomy, method(lora(), adapter()))
    with pytest.raises(PeftrunError, match="cannot be merged"):
        applied.merge()


SAVE_CASES = {
    "lora_gpt2_q_v": ("gpt2", method(lora(targets=["q", "v"], layers=[-1]))),
    "adapter_bart_parallel": ("bart", method(adapter(insertion="parallel", composition="gated", layer_norm=True))),
    "lora_plus_adapter_bert": ("bert", method(lora(targets=["q", "v"]), adapter(targets=["ffn"]), train="bias")),
    "full_t5": ("t5", method(train="all")),
    "top1_gpt2": ("gpt2", method(train="top_k", top_k=1)),
}


@pytest.mark.parametrize("case", sorted(SAVE_CASES))
def test_save_then_load_method_restores_outputs(case, tmp_path):
    family, cfg = SAVE_CASES[case]
    bb = tiny(family)
    inputs = batch(bb)
    applied = apply_method(bb.model, bb.anatomy, cfg)
    _train_steps(bb.model, inputs, steps=1)
    expected = logits(bb.model, inputs)
    report = applied.param_report()
    applied.save(tmp_path / "adapter")
    assert sorted(p.name for p in (tmp_path / "adapter").iterdir()) == ["adapter_config.json",
                                                                        "adapter_model.safetensors"]
    saved_config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert saved_config["family"] == family and saved_config["method"]["train"] == cfg["train"]
    from safetensors.torch import load_file

    tensors = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert sum(t.numel() for t in tensors.values()) == report["saved"]

    fresh = tiny(family)
    assert not torch.equal(logits(fresh.model, inputs), expected)
    restored = load_method(fresh.model, fresh.anatomy, tmp_path / "adapter")
    assert torch.equal(logits(fresh.model, inputs), expected)
    assert restored.param_report() == report


def test_full_fine_tuning_saves_the_whole_model(tmp_path):
    bb = tiny("bart")
    applied = apply_method(bb.model, bb.anatomy, method(train="all"))
    report = applied.param_report()
    assert report["trainable"] == report["backbone"] == report["total"] == report["saved"]
    assert report["trainable_pct"] == 100.0


def test_load_method_refuses_another_family(tmp_path):
    bb = tiny("gpt2")
    apply_method(bb.model, bb.anatomy, method(lora())).save(tmp_path)
    other = tiny("bart")
    with pytest.raises(PeftrunError, match="gpt2 backbone"):
        load_method(other.model, other.anatomy, tmp_path)


def test_applying_twice_is_refused():
    bb = tiny("gpt2")
    apply_method(bb.model, bb.anatomy, method(lora()))
    with pytest.raises(PeftrunError, match="already has a peftrun method"):
        apply_method(bb.model, bb.anatomy, method(lora()))


def test_deltas_are_a_submodule_seen_by_to_and_state_dict():
    bb = tiny("gpt2")
    applied = apply_method(bb.model, bb.anatomy, method(lora(targets=["q", "v"])))
    keys = [k for k in bb.model.state_dict() if k.startswith("peftrun_deltas.lora.")]
    assert len(keys) == 2 * 2 * 2  # 2 layers x (q, v) x (A, B)
    bb.model.to(torch.float64)
    assert all(p.dtype == torch.float64 for p in applied.deltas.parameters())


def test_lora_applies_before_a_sequential_adapter_whatever_the_delta_order():
    """Both on the attention output projection: the adapter reads o(x) + LoRA(x) in either list order."""
    inputs = None
    outputs = []
    state = None
    for deltas in ([lora(targets=["o"]), adapter(targets=["attn"])], [adapter(targets=["attn"]), lora(targets=["o"])]):
        bb = tiny("bart")
        inputs = batch(bb)
        applied = apply_method(bb.model, bb.anatomy, method(*deltas))
        if state is None:
            randomize_lora(applied)
            state = applied.state_to_save()
        else:
            applied.load_state(state)
        outputs.append(logits(bb.model, inputs))
    assert torch.equal(outputs[0], outputs[1])


def test_a_failing_delta_leaves_no_hooks_behind():
    bb = tiny("gpt2")
    inputs = batch(bb)
    base = logits(bb.model, inputs)
    first = lora(targets=["qkv"])
    with pytest.raises(PeftrunError, match="layer 7 does not exist"):
        apply_method(bb.model, bb.anatomy, method(first, adapter(layers=[7])))
    assert not hasattr(bb.model, "peftrun_deltas")
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in bb.model.modules())
    assert torch.equal(logits(bb.model, inputs), base)
