"""Prompt tuning and P-tuning: concatenated-embedding references, peft parity, generation, accounting."""

from __future__ import annotations

import copy

import pytest
import torch

from peftrun.config import GenerationConfig
from peftrun.errors import PeftrunError
from peftrun.generate import generate_texts
from peftrun.methods import apply_method, load_method
from peftrun.methods.soft_prompt import PromptTuning, PromptTuningSpec, PTuning, PTuningSpec, parse_template
from peftrun.train import target_only_loss
from tests.methods_tiny import generate_with_and_without_cache, tiny

N = 4


def inputs(model, batch: int = 2, length: int = 7, seed: int = 0, left: bool = False, separator: bool = False):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, model.config.vocab_size, (batch, length), generator=gen)
    mask = torch.ones(batch, length, dtype=torch.long)
    if separator:  # peftrun.data's decoder layout: source + EOS (+ target + EOS)
        ids[:, 3] = model.config.eos_token_id
    if left:
        mask[1, :2] = 0
        ids[1, :2] = model.config.pad_token_id
    else:
        mask[1, length - 2:] = 0
    return ids, mask


def attach(backbone, kind: str, **options):
    if kind == "prompt_tuning":
        delta = PromptTuning(PromptTuningSpec(**{"length": N, **options}), backbone.anatomy)
    else:
        delta = PTuning(PTuningSpec(**{"template": "[P]" * N + " {x}", **options}), backbone.anatomy)
    delta.set_tokenizer(backbone.tokenizer)
    delta.attach(backbone.model)
    return delta


def word_embeddings(backbone):
    model = backbone.model
    return model.get_encoder().get_input_embeddings() if backbone.anatomy.is_encoder_decoder \
        else model.get_input_embeddings()


# -------------------------------------------------------------------------------------- references and peft


@pytest.mark.parametrize("kind", ["prompt_tuning", "ptuning"])
@pytest.mark.parametrize("family", ["gpt2", "bart", "t5", "bert"])
def test_prompt_equals_concatenated_embeddings(family, kind):
    backbone = tiny(family)
    model = backbone.model
    ids, mask = inputs(model)
    kwargs = {"input_ids": ids, "attention_mask": mask}
    if backbone.anatomy.is_encoder_decoder:
        kwargs["decoder_input_ids"] = ids[:, :5]
    delta = attach(backbone, kind)
    got = model(**kwargs).logits
    assert got.shape[1] == kwargs.get("decoder_input_ids", ids).shape[1]  # the caller's length
    prompt = delta.virtual_embeddings().detach()[None].expand(2, -1, -1)
    delta.detach(model)
    reference = dict(kwargs, input_ids=None, inputs_embeds=torch.cat([prompt, word_embeddings(backbone)(ids)], 1),
                     attention_mask=torch.cat([torch.ones(2, N, dtype=mask.dtype), mask], 1))
    with torch.no_grad():
        expected = model(**reference).logits
    if not backbone.anatomy.is_encoder_decoder:
        expected, got = expected[:, N:][mask.bool()], got[mask.bool()]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind,encoder", [("prompt_tuning", None), ("ptuning", "lstm"), ("ptuning", "mlp")])
@pytest.mark.parametrize("family", ["gpt2", "t5"])
def test_same_logits_as_peft_with_the_same_embeddings(family, kind, encoder):
    peft = pytest.importorskip("peft")
    backbone = tiny(family)
    model = backbone.model
    task = "CAUSAL_LM" if family == "gpt2" else "SEQ_2_SEQ_LM"
    ids, mask = inputs(model)
    kwargs = {"input_ids": ids, "attention_mask": mask}
    if backbone.anatomy.is_encoder_decoder:
        kwargs["decoder_input_ids"] = ids[:, :5]
    if kind == "prompt_tuning":
        config = peft.PromptTuningConfig(task_type=task, num_virtual_tokens=N, num_transformer_submodules=1)
        delta = attach(backbone, kind)
    else:
        config = peft.PromptEncoderConfig(task_type=task, num_virtual_tokens=N, num_transformer_submodules=1,
                                          encoder_hidden_size=32, encoder_reparameterization_type=encoder.upper())
        delta = attach(backbone, kind, encoder=encoder, mid_dim=32)
    got = model(**kwargs).logits
    delta.detach(model)
    reference = peft.get_peft_model(copy.deepcopy(model), config).eval()
    with torch.no_grad():
        prompt_encoder = reference.prompt_encoder["default"]
        if kind == "prompt_tuning":
            prompt_encoder.embedding.weight.copy_(delta.prompt)
        else:  # same module names and layout as peft's PromptEncoder
            prompt_encoder.load_state_dict(delta.encoder.state_dict())
        expected = reference(**kwargs).logits
    if not backbone.anatomy.is_encoder_decoder:
        expected, got = expected[:, N:][mask.bool()], got[mask.bool()]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_ptuning_template_with_anchor_and_target_slot_on_gpt2():
    """"[P] {x} [P] ok [P] {y}": P0 x EOS P1 <ok> P2 y; position t reads the state that predicts token t+1."""
    backbone = tiny("gpt2")
    model = backbone.model
    ids, mask = inputs(model, separator=True)
    delta = attach(backbone, "ptuning", template="[P] {x} [P] ok [P] {y}", encoder="none")
    got = model(input_ids=ids, attention_mask=mask).logits
    anchor = backbone.tokenizer("ok", add_special_tokens=False)["input_ids"]
    delta.detach(model)
    words = model.get_input_embeddings()
    pseudo = delta.virtual_embeddings().detach()
    rows, masks = [], []
    for r in range(2):
        row = [pseudo[0:1], words(ids[r, :4]), pseudo[1:2], words(torch.tensor(anchor)), pseudo[2:3], words(ids[r, 4:])]
        rows.append(torch.cat(row))
        masks.append(torch.cat([torch.ones(3 + len(anchor), dtype=mask.dtype), mask[r]]))
    with torch.no_grad():
        full = model(inputs_embeds=torch.stack(rows), attention_mask=torch.stack(masks)).logits
    extra = 2 + len(anchor)  # items after the separator (index 3)
    own = [1 + t + (extra if t > 3 else 0) for t in range(ids.shape[1])]  # extended index of token t
    predictor = [own[t + 1] - 1 for t in range(ids.shape[1] - 1)]
    torch.testing.assert_close(got[:, :-1], full[:, predictor], atol=1e-5, rtol=1e-5)
    assert predictor[3] == own[3] + extra  # the separator's row is the last pseudo token's output


def test_template_parsing():
    assert parse_template("[P][P] {x} [P] {y}") == ([0, 1], [2])
    assert parse_template("[P] {x} ? [P]") == ([0], ["?", 1])
    for bad, reason in (("[P] {y} {x}", "after {x}"), ("{x} {y} [P]", "after {y}"), ("[P] [P]", "no {x}"),
                        ("{x}", "no \\[P\\]"), ("{x} {y} tail", "after {y}")):
        with pytest.raises(PeftrunError, match=reason):
            parse_template(bad)
    assert "template" in PTuning.supports(PTuningSpec(template="{x}"), tiny("gpt2").anatomy)


def test_anchor_text_needs_the_tokenizer():
    backbone = tiny("gpt2")
    delta = PTuning(PTuningSpec(template="[P] {x} ok [P] {y}"), backbone.anatomy)
    with pytest.raises(PeftrunError, match="set_tokenizer"):
        delta.attach(backbone.model)


def test_prompt_tuning_inits():
    backbone = tiny("t5")
    words = word_embeddings(backbone).weight
    vocab = attach(backbone, "prompt_tuning", init="vocab", sample_from=50).prompt.detach()
    assert all(any(torch.equal(row, w) for w in words[:50]) for row in vocab)
    text = attach(tiny("t5"), "prompt_tuning", init="text", text="positive negative", length=20, sample_from=50)
    ids = backbone.tokenizer("positive negative", add_special_tokens=False)["input_ids"]
    assert len(ids) < 20
    torch.testing.assert_close(text.prompt.detach()[: len(ids)], words[ids])  # the labels' embeddings first
    assert all(any(torch.equal(row, w) for w in words[:50]) for row in text.prompt.detach()[len(ids):])
    rand = attach(tiny("t5"), "prompt_tuning", init="random").prompt.detach()
    assert rand.min() >= -0.5 and rand.max() <= 0.5 and rand.std() > 0.2
    assert "text" in PromptTuning.supports(PromptTuningSpec(init="text"), backbone.anatomy)


# ---------------------------------------------------------------------------------------------- generation


@pytest.mark.parametrize("beams", [1, 3])
@pytest.mark.parametrize("family,kind", [("gpt2", "prompt_tuning"), ("gpt2", "ptuning"), ("bart", "ptuning"),
                                         ("t5", "prompt_tuning")])
def test_generation_gives_the_same_tokens_with_and_without_cache(family, kind, beams):
    backbone = tiny(family)
    model = backbone.model
    ids, mask = inputs(model, batch=3, length=6, left=family == "gpt2", separator=family == "gpt2")
    template = {"template": "[P][P] {x} [P] {y}"} if kind == "ptuning" else {}
    attach(backbone, kind, **template)
    cached, settings = generate_with_and_without_cache(model, ids, mask, beams)
    if beams == 1 and family == "gpt2":  # greedy tokens = argmax of one teacher-forced pass over the result
        full = cached.sequences
        full_mask = torch.cat([mask, torch.ones(3, 6, dtype=mask.dtype)], 1)
        positions = (full_mask.cumsum(-1) - 1).clamp(min=0)
        logits = model(input_ids=full, attention_mask=full_mask, position_ids=positions).logits[:, 5:-1]
        logits[..., model.config.eos_token_id] = -float("inf")  # min_new_tokens suppressed EOS
        assert torch.equal(logits.argmax(-1), full[:, 6:])


def test_runner_generation_with_a_soft_prompt_is_cache_independent():
    backbone = tiny("gpt2")
    model = backbone.model
    attach(backbone, "ptuning", template="[P][P] {x} [P] {y}")
    eos = backbone.tokenizer.eos_token_id
    prompts = [backbone.tokenizer("a cat sat")["input_ids"] + [eos], backbone.tokenizer("on")["input_ids"] + [eos]]
    config = GenerationConfig(num_beams=2, max_new_tokens=5, batch_size=2)
    cached = generate_texts(model, backbone.tokenizer, "decoder", prompts, config)
    model.generation_config.use_cache = False
    assert generate_texts(model, backbone.tokenizer, "decoder", prompts, config) == cached


# ----------------------------------------------------------------------------- training, saving, accounting


@pytest.mark.parametrize("family,kind", [("gpt2", "ptuning"), ("t5", "prompt_tuning"), ("bart", "ptuning")])
def test_a_training_step_changes_only_delta_parameters(family, kind):
    backbone = tiny(family)
    model = backbone.model
    item = {"kind": kind, "length": N} if kind == "prompt_tuning" else {"kind": kind, "template": "[P][P] {x} [P] {y}"}
    applied = apply_method(model, backbone.anatomy, {"name": kind, "train": "none", "top_k": 0, "deltas": [item]})
    ids, mask = inputs(model, separator=family == "gpt2")
    batch = {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}
    if backbone.anatomy.is_encoder_decoder:
        batch.update(decoder_input_ids=ids[:, :5], labels=ids[:, 1:6])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.train()
    loss, count = target_only_loss(model, backbone.anatomy, batch)  # the runner's target-only loss
    assert count == int((batch["labels"][:, 1:] != -100).sum()) if family == "gpt2" else count == 10
    loss.backward()
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1).step()
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert moved == {f"peftrun_deltas.{kind}.{n}" for n, _ in applied.deltas[kind].named_parameters()}


def test_ptuning_saves_only_the_encoder_output_and_load_restores_outputs(tmp_path):
    backbone = tiny("gpt2")
    method = {"name": "ptuning", "train": "none", "top_k": 0,
              "deltas": [{"kind": "ptuning", "template": "[P][P] {x} [P] {y}", "encoder": "lstm"}]}
    applied = apply_method(backbone.model, backbone.anatomy, method)
    d = backbone.model.config.n_embd
    h = d // 2  # the paper's LSTM: hidden d/2 per direction
    lstm = 2 * (4 * h * (d + h) + 8 * h) + 2 * (4 * h * (2 * h + h) + 8 * h)
    mlp = (2 * h * 2 * h + 2 * h) + (2 * h * d + d)
    report = applied.param_report()["per_delta"]["ptuning"]
    assert report["trainable"] == 3 * d + lstm + mlp
    assert report["saved"] == 3 * d
    ids, mask = inputs(backbone.model, separator=True)
    with torch.no_grad():
        expected = backbone.model(input_ids=ids, attention_mask=mask).logits
    applied.save(tmp_path)
    fresh = tiny("gpt2")
    loaded = load_method(fresh.model, fresh.anatomy, tmp_path)
    assert [n for n, _ in loaded.deltas["ptuning"].named_parameters()] == ["prompt"]
    with torch.no_grad():
        torch.testing.assert_close(fresh.model(input_ids=ids, attention_mask=mask).logits, expected)


def test_prompt_tuning_100_tokens_on_t5_base_saves_76800():
    import transformers
    from transformers import T5Config

    from peftrun.backbones.families import anatomy_of

    config = T5Config(d_model=768, d_kv=64, num_heads=12, num_layers=12, d_ff=3072, vocab_size=32128)
    with torch.device("meta"):
        model = transformers.AutoModelForSeq2SeqLM.from_config(config)
    applied = apply_method(model, anatomy_of(model, "t5"), {
        "name": "prompt_tuning", "train": "none", "top_k": 0, "deltas": [{"kind": "prompt_tuning", "length": 100}]})
    report = applied.param_report()
    assert report["saved"] == report["trainable"] == 100 * config.d_model == 76_800


def test_token_classification_with_a_prompt_keeps_the_caller_length():
    backbone = tiny("bert", head="token", num_labels=3)
    model = backbone.model
    ids, mask = inputs(model)
    types = torch.zeros_like(ids)
    delta = attach(backbone, "prompt_tuning")
    got = model(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
    assert got.shape == (2, 7, 3)
    prompt = delta.virtual_embeddings().detach()[None].expand(2, -1, -1)
    delta.detach(model)
    with torch.no_grad():
        expected = model(inputs_embeds=torch.cat([prompt, model.get_input_embeddings()(ids)], 1),
                         attention_mask=torch.cat([torch.ones(2, N, dtype=mask.dtype), mask], 1)).logits[:, N:]
    torch.testing.assert_close(got[mask.bool()], expected[mask.bool()], atol=1e-5, rtol=1e-5)
