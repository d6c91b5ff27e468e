"""The llama family on tiny-llama (grouped-query attention: 4 query heads, 2 key/value heads) and on the real
SmolLM2-135M architecture (meta device): peft parity, GQA prefixes, rotary shift, closed-form counts.

Tolerance: logits atol 1e-5 (fp32) against peft with the same trained tensors copied in.
"""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import require_data
from methods_tiny import generate_with_and_without_cache, method, tiny

from peftrun.backbones.families import anatomy_of, get_family
from peftrun.methods import apply_method
from peftrun.methods.prefix import Prefix, PrefixSpec

peft = pytest.importorskip("peft")
P = 3
ATOL = 1e-5


def _inputs(model, batch: int = 2, length: int = 7, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(5, model.config.vocab_size, (batch, length), generator=gen)


def _randomize(module: torch.nn.Module, seed: int = 3, scale: float = 1.0) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * scale)


def test_tiny_llama_has_grouped_query_attention():
    backbone = tiny("llama")
    shape = get_family("llama").shape(backbone.model.config).stacks["decoder"]
    assert (shape.heads, shape.kv_heads, shape.head_dim) == (4, 2, 16)
    layer = backbone.model.model.layers[0]
    assert layer.self_attn.k_proj.out_features == shape.kv_heads * shape.head_dim == 32
    assert backbone.model.lm_head.weight is backbone.model.model.embed_tokens.weight  # tied
    assert not [n for n, _ in backbone.model.named_parameters() if n.endswith(".bias")]


@pytest.mark.parametrize("projection", [False, True])
def test_prefix_gives_the_same_logits_as_peft_with_one_prefix_per_kv_head(projection):
    backbone = tiny("llama")
    model = backbone.model
    config = peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=P, prefix_projection=projection,
                                     encoder_hidden_size=16)
    reference = peft.get_peft_model(copy.deepcopy(model), config).eval()
    encoder = reference.prompt_encoder["default"]
    _randomize(encoder)
    ids = _inputs(model)
    mask = torch.ones_like(ids)
    with torch.no_grad():
        expected = reference(input_ids=ids, attention_mask=mask).logits
    delta = Prefix(PrefixSpec(length=P, mid_dim=16 if projection else None), backbone.anatomy)
    delta.attach(model)
    layers, kv_width = model.config.num_hidden_layers, 2 * 16  # 2 key/value heads of 16
    with torch.no_grad():
        if projection:
            delta.encoders["decoder_self"].embedding.load_state_dict(encoder.embedding.state_dict())
            delta.encoders["decoder_self"].transform.load_state_dict(encoder.transform.state_dict())
        else:  # peft: (P, L * 2 * kv_width), chunk 2l (+1) = layer l's keys (values); ours (L, 2, P, kv_width)
            weight = encoder.embedding.weight
            assert weight.shape == (P, layers * 2 * kv_width)
            delta.prefixes["decoder_self"].copy_(weight.view(P, layers, 2, kv_width).permute(1, 2, 0, 3))
        got = model(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)
    assert (got - tiny("llama").model(input_ids=ids).logits).abs().max() > 1e-3  # the prefix matters


def test_gated_composition_equals_concat_under_gqa():
    """The explicit gated form repeats key/value heads for their query groups: it must equal concat."""
    backbone = tiny("llama")
    ids = _inputs(backbone.model)
    concat = Prefix(PrefixSpec(length=P, mid_dim=None), backbone.anatomy)
    concat.attach(backbone.model)
    _randomize(concat)
    with torch.no_grad():
        expected = backbone.model(input_ids=ids).logits
    concat.detach(backbone.model)
    gated = Prefix(PrefixSpec(length=P, mid_dim=None, composition="gated"), backbone.anatomy)
    gated.attach(backbone.model)
    _randomize(gated)
    with torch.no_grad():
        torch.testing.assert_close(backbone.model(input_ids=ids).logits, expected, atol=ATOL, rtol=0)


def test_prefix_generation_is_the_same_with_and_without_the_cache():
    backbone = tiny("llama")
    model = backbone.model
    applied = apply_method(model, backbone.anatomy, method({"kind": "prefix", "length": P, "mid_dim": None}))
    _randomize(applied.deltas["prefix"], scale=2.0)
    ids = _inputs(model, length=5)
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    ids[1, :2] = model.config.pad_token_id
    cached, _ = generate_with_and_without_cache(model, ids, mask, beams=1)  # asserts equal tokens and scores
    assert cached.sequences.shape == (2, 5 + 6)


def test_prompt_tuning_gives_the_same_logits_as_peft():
    backbone = tiny("llama")
    model = backbone.model
    n = 4
    applied = apply_method(model, backbone.anatomy, method({"kind": "prompt_tuning", "length": n, "init": "random"}))
    delta = applied.deltas["prompt_tuning"]
    ids = _inputs(model)
    mask = torch.ones_like(ids)
    mask[1, -2:] = 0
    with torch.no_grad():
        got = model(input_ids=ids, attention_mask=mask).logits
    applied.remove()
    config = peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=n)
    reference = peft.get_peft_model(copy.deepcopy(model), config).eval()
    with torch.no_grad():
        reference.prompt_encoder["default"].embedding.weight.copy_(delta.prompt)
        expected = reference(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(got[mask.bool()], expected[:, n:][mask.bool()], atol=ATOL, rtol=0)


# ------------------------------------------------------------------------------- SmolLM2-135M (meta device)


def _smollm2(auto: str = "AutoModelForCausalLM"):
    import transformers

    config = transformers.AutoConfig.from_pretrained(require_data("configs", "smollm2-135m-instruct"))
    with torch.device("meta"):
        model = getattr(transformers, auto).from_config(config)
    return model, anatomy_of(model, "llama")


def test_smollm2_lora_q_v_closed_form():
    model, anatomy = _smollm2()
    report = apply_method(model, anatomy, method({"kind": "lora", "rank": 8, "targets": ["q", "v"]})).param_report()
    layers, d, r, kv = 30, 576, 8, 3 * 64  # v_proj is 576 -> 3 key/value heads x 64
    expected = layers * r * ((d + d) + (d + kv))
    assert expected == 460_800
    assert report["trainable"] == report["saved"] == expected
    assert report["per_delta"]["lora"]["per_role"] == {"q": layers * r * 2 * d, "v": layers * r * (d + kv)}


def test_smollm2_prefix_closed_form_equals_what_peft_saves():
    model, anatomy = _smollm2()
    report = apply_method(model, anatomy, method({"kind": "prefix", "length": 10, "mid_dim": None})).param_report()
    expected = 10 * 30 * 2 * 3 * 64  # P x layers x (key, value) x kv_heads x head_dim
    assert expected == 115_200
    assert report["per_delta"]["prefix"]["saved"] == report["per_delta"]["prefix"]["trainable"] == expected
    import transformers

    # peft cannot save from the meta device: the same model with a toy FFN (which the
    # prefix does not depend on) is a small real-device model
    config = transformers.AutoConfig.from_pretrained(require_data("configs", "smollm2-135m-instruct"))
    config.intermediate_size = 8
    reference = transformers.AutoModelForCausalLM.from_config(config)
    saved = peft.get_peft_model_state_dict(peft.get_peft_model(
        reference, peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=10)))
    assert sum(t.numel() for t in saved.values()) == expected


def test_smollm2_lora_on_the_gated_ffn_counts_gate_up_down():
    model, anatomy = _smollm2()
    report = apply_method(model, anatomy, method({"kind": "lora", "rank": 4, "targets": ["ffn_in", "ffn_gate",
                                                                                       "ffn_out"]})).param_report()
    layers, d, ffn, r = 30, 576, 1536, 4
    assert report["per_delta"]["lora"]["per_role"] == {role: layers * r * (d + ffn)
                                                        for role in ("ffn_in", "ffn_gate", "ffn_out")}


@pytest.mark.parametrize(("head", "cls"), [("classification", "LlamaForSequenceClassification"),
                                           ("token", "LlamaForTokenClassification")])
def test_head_formulations_train_the_head_and_the_delta(head, cls):
    backbone = tiny("llama", head=head, num_labels=3)
    model = backbone.model
    assert type(model).__name__ == cls and backbone.anatomy.heads == ("score",)
    applied = apply_method(model, backbone.anatomy, method({"kind": "lora", "rank": 2, "targets": ["q", "ffn_gate"]},
                                                           train="head"))
    ids = _inputs(model)
    labels = torch.tensor([0, 2]) if head == "classification" else torch.randint(0, 3, ids.shape)
    model.train()
    model(input_ids=ids, labels=labels).loss.backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert "score.weight" in grads and any("lora" in n for n in grads)
    trainable_outside = {n for n, p in model.named_parameters() if p.requires_grad and "lora" not in n}
    assert trainable_outside and all(n.startswith("score.") for n in trainable_outside)  # the head (token: with bias)
    assert applied.param_report()["trainable"] > 0
