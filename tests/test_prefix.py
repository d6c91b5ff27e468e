"""Prefix-tuning / P-tuning v2 through the attention interface: references, peft parity, generation, accounting.

References are built independently of peftrun's attention wrapper: GPT-2 gets the prefix as explicit past
key/values (a DynamicCache, the way peft and Li & Liang's code feed it); BART/T5/BERT run a test-only
attention function that concatenates the prefix and applies a 4D mask written out here (causal pattern,
padding and always-visible prefix columns) and, for T5, zero bias columns.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from transformers import AttentionInterface, DynamicCache

from peftrun.backbones.anatomy import get_module
from peftrun.errors import PeftrunError
from peftrun.methods import apply_method, load_method
from peftrun.methods.attention_hook import IMPLEMENTATION
from peftrun.methods.prefix import Prefix, PrefixSpec
from peftrun.train import target_only_loss
from tests.methods_tiny import generate_with_and_without_cache, tiny

P = 3


def inputs(model, batch: int = 2, length: int = 7, seed: int = 0, left: bool = False):
    """Random ids with one padded row (right padding, or left for decoder-only generation)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, model.config.vocab_size, (batch, length), generator=gen)
    mask = torch.ones(batch, length, dtype=torch.long)
    if left:
        mask[1, :2] = 0
        ids[1, :2] = model.config.pad_token_id
    else:
        mask[1, length - 3:] = 0
    return ids, mask


def prefix_delta(backbone, **options) -> Prefix:
    spec = PrefixSpec(**{"length": P, "mid_dim": None, **options})
    delta = Prefix(spec, backbone.anatomy)
    delta.attach(backbone.model)
    return delta


def randomize(delta: Prefix, seed: int = 3, scale: float = 2.0) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in delta.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * scale)


# ------------------------------------------------------------------------------------------ GPT-2 references


@pytest.mark.parametrize("projection", [False, True])
def test_gpt2_prefix_gives_the_same_logits_as_peft(projection):
    peft = pytest.importorskip("peft")
    backbone = tiny("gpt2")
    model = backbone.model
    config = peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=P, prefix_projection=projection,
                                     encoder_hidden_size=16)
    reference = peft.get_peft_model(copy.deepcopy(model), config).eval()
    ids, _ = inputs(model)
    mask = torch.ones_like(ids)  # peft numbers positions from P without looking at padding: compare unpadded
    expected = reference(input_ids=ids, attention_mask=mask).logits
    delta = prefix_delta(backbone, mid_dim=16 if projection else None)
    encoder = reference.prompt_encoder["default"]
    with torch.no_grad():
        if projection:  # same layout as peft's PrefixEncoder: copy the MLP itself
            delta.encoders["decoder_self"].embedding.load_state_dict(encoder.embedding.state_dict())
            delta.encoders["decoder_self"].transform.load_state_dict(encoder.transform.state_dict())
        else:  # peft: (P, L * 2 * d), chunk 2l (+1) = layer l's keys (values); ours (L, 2, P, d)
            layers, d = model.config.n_layer, model.config.n_embd
            delta.prefixes["decoder_self"].copy_(encoder.embedding.weight.view(P, layers, 2, d).permute(1, 2, 0, 3))
    got = model(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def _as_cache(delta: Prefix, model, batch: int) -> DynamicCache:
    group = delta.groups[0]
    prefix = delta.compute(group).detach()  # (L, 2, P, d)
    cache = DynamicCache(config=model.config)
    for layer in range(prefix.shape[0]):
        kv = prefix[layer].view(2, P, group.kv_heads, group.head_dim).transpose(1, 2)
        cache.update(kv[0][None].expand(batch, -1, -1, -1).contiguous(),
                     kv[1][None].expand(batch, -1, -1, -1).contiguous(), layer)
    return cache


@pytest.mark.parametrize("shift", [True, False])
def test_gpt2_prefix_equals_explicit_past_key_values_with_padding(shift):
    backbone = tiny("gpt2")
    model = backbone.model
    ids, mask = inputs(model, left=True)
    delta = prefix_delta(backbone, shift_positions=shift)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # what generate() passes for a left-padded batch
    got = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
    delta.detach(model)
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=torch.cat([torch.ones(2, P, dtype=mask.dtype), mask], 1),
                         position_ids=positions + (P if shift else 0), cache=_as_cache(delta, model, 2)).logits
    real = mask.bool()
    torch.testing.assert_close(got[real], expected[real], atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------- BART / T5 / BERT reference

_REFERENCE: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}


def _reference_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, position_bias=None,
                         **kwargs):
    """Plain attention over [prefix; keys] with the caller's explicit 4D mask (already P columns wider)."""
    pk, pv = _REFERENCE[id(module)]
    batch = query.shape[0]
    key = torch.cat([pk.expand(batch, -1, -1, -1), key], dim=2)
    value = torch.cat([pv.expand(batch, -1, -1, -1), value], dim=2)
    scores = query @ key.transpose(-1, -2) * (query.shape[-1] ** -0.5 if scaling is None else scaling)
    if position_bias is not None:
        scores = scores + F.pad(position_bias, (pk.shape[2], 0))  # zero bias for the prefix columns
    if attention_mask is not None:
        scores = scores + attention_mask
    return (scores.softmax(-1) @ value).transpose(1, 2), None


AttentionInterface.register("peftrun_test_reference", _reference_attention)


def _additive(visible: torch.Tensor) -> torch.Tensor:
    return torch.where(visible, 0.0, torch.finfo(torch.float32).min)


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
@pytest.mark.parametrize("family", ["bart", "t5", "bert"])
def test_prefix_equals_hand_built_reference(family, implementation):
    backbone = tiny(family)
    model = backbone.model
    model.set_attn_implementation(implementation)
    ids, mask = inputs(model)
    batch, length, target = ids.shape[0], ids.shape[1], 5
    kwargs = {"input_ids": ids, "attention_mask": mask}
    if backbone.anatomy.is_encoder_decoder:
        kwargs["decoder_input_ids"] = torch.randint(5, model.config.vocab_size, (batch, target))
    delta = prefix_delta(backbone, mid_dim=8)
    got = model(**kwargs).logits
    delta.detach(model)
    assert model.config._attn_implementation == implementation  # restored
    for group in delta.groups:
        prefix = delta.compute(group).detach()
        for index, path in enumerate(group.modules):
            kv = prefix[index].view(2, P, group.kv_heads, group.head_dim).transpose(1, 2)
            _REFERENCE[id(get_module(model, path))] = (kv[0][None], kv[1][None])
    model.set_attn_implementation("peftrun_test_reference")
    visible = torch.cat([torch.ones(batch, P, dtype=torch.bool), mask.bool()], 1)[:, None, None, :]
    reference = {"input_ids": ids, "attention_mask": _additive(visible)}  # encoder self and cross attention
    if backbone.anatomy.is_encoder_decoder:
        causal = torch.tril(torch.ones(target, target, dtype=torch.bool))
        decoder = torch.cat([torch.ones(target, P, dtype=torch.bool), causal], 1)
        reference["decoder_input_ids"] = kwargs["decoder_input_ids"]
        reference["decoder_attention_mask"] = _additive(decoder[None, None].expand(batch, 1, -1, -1))
    else:
        reference["position_ids"] = torch.arange(length)[None] + P  # shift_positions (P-tuning v2's BERT)
    with torch.no_grad():
        expected = model(**reference).logits
    if not backbone.anatomy.is_encoder_decoder:
        got, expected = got[mask.bool()], expected[mask.bool()]
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-4)


def test_padding_stays_masked_and_the_prefix_is_seen_by_every_row():
    backbone = tiny("bert")
    model = backbone.model
    ids, mask = inputs(model)
    delta = prefix_delta(backbone)
    randomize(delta)
    padded = model(input_ids=ids, attention_mask=mask).logits
    short = model(input_ids=ids[1:, :4], attention_mask=mask[1:, :4]).logits
    torch.testing.assert_close(padded[1, :4], short[0], atol=1e-5, rtol=1e-5)
    assert torch.isfinite(padded).all()  # padding query rows see the prefix: no empty softmax


# ---------------------------------------------------------------------------------------------- generation


@pytest.mark.parametrize("beams", [1, 3])
@pytest.mark.parametrize("family,composition", [("gpt2", "concat"), ("bart", "concat"), ("t5", "concat"),
                                                ("t5", "gated"), ("gpt2", "add")])
def test_generation_gives_the_same_tokens_with_and_without_cache(family, composition, beams):
    backbone = tiny(family)
    model = backbone.model
    ids, mask = inputs(model, batch=3, length=6, left=family == "gpt2")
    delta = prefix_delta(backbone, composition=composition)
    randomize(delta)
    cached, settings = generate_with_and_without_cache(model, ids, mask, beams)
    delta.detach(model)
    base = model.generate(**settings)
    finite = torch.isfinite(base.scores[0])  # min_new_tokens gives EOS -inf
    assert (base.scores[0] - cached.scores[0])[finite].abs().max() > 1e-3  # the prefix did act on generation


@pytest.mark.parametrize("family", ["gpt2", "bart", "t5", "bert"])
def test_gated_form_equals_concat_and_add_differs(family):
    backbone = tiny(family)
    model = backbone.model
    ids, mask = inputs(model)
    kwargs = {"input_ids": ids, "attention_mask": mask}
    if backbone.anatomy.is_encoder_decoder:
        kwargs["decoder_input_ids"] = ids[:, :5]
    outputs = {}
    for composition in ("concat", "gated", "add"):
        delta = prefix_delta(backbone, composition=composition)
        randomize(delta)
        outputs[composition] = model(**kwargs).logits
        delta.detach(model)
    real = mask.bool() if not backbone.anatomy.is_encoder_decoder else torch.ones(2, 5, dtype=torch.bool)
    torch.testing.assert_close(outputs["gated"][real], outputs["concat"][real], atol=1e-4, rtol=1e-4)
    assert (outputs["add"][real] - outputs["concat"][real]).abs().max() > 1e-2


def test_detach_restores_the_base_model():
    backbone = tiny("t5")
    model = backbone.model
    ids, mask = inputs(model)
    kwargs = {"input_ids": ids, "attention_mask": mask, "decoder_input_ids": ids[:, :4]}
    with torch.no_grad():
        base = model(**kwargs).logits
    delta = prefix_delta(backbone)
    assert {m.config._attn_implementation for m in model.modules() if hasattr(m, "config")} == {IMPLEMENTATION}
    delta.detach(model)
    assert {m.config._attn_implementation for m in model.modules() if hasattr(m, "config")} == {"sdpa"}
    with torch.no_grad():
        torch.testing.assert_close(model(**kwargs).logits, base, atol=0, rtol=0)


def test_layer_and_attention_selection():
    backbone = tiny("bart")
    delta = prefix_delta(backbone, layers=[-1], attention=["cross"])
    assert [(g.stack, g.kind, g.layers) for g in delta.groups] == [("decoder", "cross", (1,))]
    assert Prefix.supports(PrefixSpec(attention=["cross"]), tiny("gpt2").anatomy) is not None
    assert "length" in Prefix.supports(PrefixSpec(length=0), backbone.anatomy)
    assert "composition" in Prefix.supports(PrefixSpec(composition="mul"), backbone.anatomy)


# ----------------------------------------------------------------------------- training, saving, accounting


def _lm_batch(backbone):
    model = backbone.model
    ids, mask = inputs(model)
    labels = ids.masked_fill(mask == 0, -100)
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    if backbone.anatomy.is_encoder_decoder:
        batch["labels"] = ids[:, :5]
        batch["decoder_input_ids"] = ids[:, :5]
    return batch


@pytest.mark.parametrize("family", ["gpt2", "t5"])
def test_a_training_step_changes_only_delta_parameters(family):
    backbone = tiny(family)
    model = backbone.model
    applied = apply_method(model, backbone.anatomy, {
        "name": "prefix", "train": "none", "top_k": 0,
        "deltas": [{"kind": "prefix", "length": P, "mid_dim": 8, "dropout": 0.1}],
    })
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model.train()
    loss, _ = target_only_loss(model, backbone.anatomy, _lm_batch(backbone))  # the runner's loss
    loss.backward()
    optimizer.step()
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    delta_names = {f"peftrun_deltas.prefix.{n}" for n, _ in applied.deltas["prefix"].named_parameters()}
    assert moved == delta_names


def test_save_keeps_only_the_prefix_and_load_restores_outputs(tmp_path):
    backbone = tiny("bart")
    method = {"name": "prefix", "train": "none", "top_k": 0,
              "deltas": [{"kind": "prefix", "length": P, "mid_dim": 8}]}
    applied = apply_method(backbone.model, backbone.anatomy, method)
    randomize(applied.deltas["prefix"], scale=0.5)
    kwargs = {k: v for k, v in _lm_batch(backbone).items() if k != "labels"}
    with torch.no_grad():
        expected = backbone.model(**kwargs).logits
    applied.save(tmp_path)
    fresh = tiny("bart")
    loaded = load_method(fresh.model, fresh.anatomy, tmp_path)
    delta = loaded.deltas["prefix"]
    assert len(delta.encoders) == 0  # no MLP after loading: the prefix is a plain parameter
    assert {n: tuple(p.shape) for n, p in delta.named_parameters()} == {
        f"prefixes.{g}": (2, 2, P, 64) for g in ("encoder_self", "decoder_self", "decoder_cross")}
    with torch.no_grad():
        torch.testing.assert_close(fresh.model(**kwargs).logits, expected, atol=1e-5, rtol=1e-5)


def _meta_model(auto_class: str, config):
    import transformers

    with torch.device("meta"):
        return getattr(transformers, auto_class).from_config(config)


def _apply_meta(model, family, deltas):
    from peftrun.backbones.families import anatomy_of

    anatomy = anatomy_of(model, family)
    return apply_method(model, anatomy, {"name": "m", "train": "none", "top_k": 0, "deltas": deltas})


def test_ptuning_v2_on_roberta_large_saves_the_closed_form_count():
    from transformers import RobertaConfig

    config = RobertaConfig(vocab_size=50265, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                           intermediate_size=4096, max_position_embeddings=514, type_vocab_size=1, pad_token_id=1)
    model = _meta_model("AutoModelForSequenceClassification", config)
    applied = _apply_meta(model, "bert", [{"kind": "prefix", "length": 128, "mid_dim": None, "dropout": 0.1}])
    report = applied.param_report()
    expected = 128 * config.num_hidden_layers * 2 * config.hidden_size
    assert expected == 6_291_456
    assert report["per_delta"]["prefix"]["saved"] == expected
    assert report["per_delta"]["prefix"]["trainable"] == expected  # no reparameterisation: trained = saved


def test_prefix_with_mlp_on_gpt2_medium_trains_the_mlp_but_saves_only_the_prefix():
    from transformers import GPT2Config

    config = GPT2Config(n_embd=1024, n_layer=24, n_head=16)
    model = _meta_model("AutoModelForCausalLM", config)
    length, mid = 10, 512
    applied = _apply_meta(model, "gpt2", [{"kind": "prefix", "length": length, "mid_dim": mid}])
    report = applied.param_report()["per_delta"]["prefix"]
    d, layers = config.n_embd, config.n_layer
    out = layers * 2 * d
    assert report["trainable"] == length * d + (d * mid + mid) + (mid * out + out)
    assert report["saved"] == layers * 2 * length * d == 491_520


def test_encoder_decoder_prefix_counts_every_attention_kind():
    backbone = tiny("t5")
    config = backbone.model.config
    delta = prefix_delta(backbone, length=5)
    inner = config.num_heads * config.d_kv
    sizes = {k: v.numel() for k, v in delta.saved_state_dict().items()}
    assert sizes == {"encoder_self": config.num_layers * 2 * 5 * inner,
                     "decoder_self": config.num_decoder_layers * 2 * 5 * inner,
                     "decoder_cross": config.num_decoder_layers * 2 * 5 * inner}


def test_ptuning_v2_classification_and_token_heads_on_bert():
    for head, shape in (("classification", (2, 3)), ("token", (2, 7, 3))):
        backbone = tiny("bert", head=head, num_labels=3)
        model = backbone.model
        applied = apply_method(model, backbone.anatomy, {
            "name": "ptuning_v2", "train": "head", "top_k": 0,
            "deltas": [{"kind": "prefix", "length": 4, "mid_dim": None, "dropout": 0.1}],
        })
        ids, mask = inputs(model)
        model.train()
        logits = model(input_ids=ids, attention_mask=mask).logits
        assert logits.shape == shape
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        logits.float().pow(2).mean().backward()
        torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1).step()
        moved = {n.split(".")[0] for n, p in model.named_parameters() if not torch.equal(p, before[n])}
        assert moved == {"peftrun_deltas", "classifier"}
        config = model.config
        report = applied.param_report()
        prefix = 4 * config.num_hidden_layers * 2 * config.hidden_size
        head_size = config.hidden_size * 3 + 3
        assert report["saved"] == prefix + head_size


def test_flash_attention_is_refused_with_the_fix():
    backbone = tiny("gpt2")
    backbone.model.config._attn_implementation_internal = "flash_attention_2"
    with pytest.raises(PeftrunError, match="sdpa"):
        prefix_delta(backbone)


def test_without_the_mask_function_padding_would_leak_in():
    """Why the mask function is registered: for an unknown implementation masking_utils returns no mask at all."""
    from transformers.masking_utils import AttentionMaskInterface

    backbone = tiny("bert")
    model = backbone.model
    ids, mask = inputs(model)
    delta = prefix_delta(backbone)
    with torch.no_grad():
        masked = model(input_ids=ids, attention_mask=mask).logits
        registered = AttentionMaskInterface._global_mapping.pop(IMPLEMENTATION)
        try:
            leaked = model(input_ids=ids, attention_mask=mask).logits
        finally:
            AttentionMaskInterface.register(IMPLEMENTATION, registered)
        delta.detach(model)
    assert (leaked[1, :4] - masked[1, :4]).abs().max() > 1e-3  # the padded row now attends to its padding
    torch.testing.assert_close(leaked[0], masked[0], atol=1e-5, rtol=1e-5)  # the unpadded row is unaffected
