"""MAM adapter (He et al. 2022): prefix on attention + scaled parallel adapter on the FFN, from conf/method/mam.yaml."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from peftrun.backbones.load import load_backbone
from peftrun.config import BackboneConfig, PathsConfig
from peftrun.methods import apply_method, load_method
from peftrun.methods.prefix import Prefix, PrefixSpec
from peftrun.train import target_only_loss

CONF = Path(__file__).resolve().parent.parent / "conf"


def tiny(family: str):
    cfg = BackboneConfig(name=f"tiny-{family}", family=family, source="tiny")
    backbone = load_backbone(cfg, PathsConfig(cache_dir=os.environ["PEFTRUN_CACHE_DIR"]))
    backbone.model.eval()
    return backbone


def compose(name: str, *overrides: str):
    """conf/method/<name>.yaml through Hydra (the way `peftrun method=<name> ...` composes it)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from peftrun.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        return hydra_compose("config", overrides=[f"method={name}", *overrides]).method


def batch(backbone):
    model = backbone.model
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(5, model.config.vocab_size, (2, 7), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    out = {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}
    if backbone.anatomy.is_encoder_decoder:
        out.update(decoder_input_ids=ids[:, :5], labels=ids[:, 1:6])
    return out


def test_mam_yaml_has_he_et_al_settings():
    deltas = OmegaConf.to_container(compose("mam").deltas, resolve=True)
    prefix, adapter = deltas
    assert (prefix["kind"], prefix["length"], prefix["mid_dim"], prefix["composition"]) == ("prefix", 30, 800, "concat")
    assert (adapter["kind"], adapter["targets"], adapter["insertion"], adapter["bottleneck"], adapter["composition"],
            adapter["scale"], adapter["init"]) == ("adapter", ["ffn"], "parallel", 512, "scaled", 4.0, "lora")


def test_knobs_and_the_gated_form_are_one_override_away():
    cfg = OmegaConf.to_container(compose("mam", "method.length=8", "method.bottleneck=16", "method.scale=2",
                                         "method.deltas.0.composition=gated").deltas, resolve=True)
    assert (cfg[0]["length"], cfg[0]["composition"], cfg[1]["bottleneck"], cfg[1]["scale"]) == (8, "gated", 16, 2.0)


@pytest.mark.parametrize("family", ["gpt2", "bart", "t5"])
def test_mam_accounting_is_the_closed_form_of_both_deltas(family):
    backbone = tiny(family)
    model = backbone.model
    applied = apply_method(model, backbone.anatomy, compose("mam", "method.length=5", "method.mid_dim=16",
                                                            "method.bottleneck=8"))
    report = applied.param_report()
    d = model.get_input_embeddings().embedding_dim
    stacks = {s.name: len(backbone.anatomy.layers(model, s.name)) for s in backbone.anatomy.stacks}
    groups = [(name, len(s.attentions)) for name, s in ((s.name, s) for s in backbone.anatomy.stacks)]
    prefix_saved = prefix_trained = 0
    for name, kinds in groups:
        inner = d  # heads x head_dim = d_model for all tiny families
        out = stacks[name] * 2 * inner
        prefix_saved += kinds * stacks[name] * 2 * 5 * inner
        prefix_trained += kinds * (5 * d + (d * 16 + 16) + (16 * out + out))
    adapter = sum(stacks.values()) * ((d * 8 + 8) + (8 * d + d))  # one FFN adapter per layer: down + up
    assert report["per_delta"]["prefix"] == {"kind": "prefix", "trainable": prefix_trained, "saved": prefix_saved,
                                             "per_role": report["per_delta"]["prefix"]["per_role"]}
    assert report["per_delta"]["ffn_adapter"]["saved"] == report["per_delta"]["ffn_adapter"]["trainable"] == adapter
    assert report["trainable"] == prefix_trained + adapter
    assert report["saved"] == prefix_saved + adapter


@pytest.mark.parametrize("family", ["bart", "t5"])
def test_mam_at_init_equals_its_prefix_alone_and_gated_equals_concat(family):
    backbone = tiny(family)
    model = backbone.model
    inputs = {k: v for k, v in batch(backbone).items() if k != "labels"}
    logits = {}
    for composition in ("concat", "gated"):
        applied = apply_method(model, backbone.anatomy, compose(
            "mam", "method.length=4", "method.mid_dim=16", "method.bottleneck=8",
            f"method.deltas.0.composition={composition}"))
        torch.manual_seed(1)
        with torch.no_grad():
            for p in applied.deltas["prefix"].parameters():
                p.copy_(torch.randn_like(p))
            logits[composition] = model(**inputs).logits
        prefix = applied.deltas["prefix"].saved_state_dict()
        applied.remove()
    alone = Prefix(PrefixSpec(length=4, mid_dim=None), backbone.anatomy)
    alone.attach(model)
    alone.load_saved_state_dict(prefix)
    with torch.no_grad():
        expected = model(**inputs).logits
    torch.testing.assert_close(logits["concat"], expected, atol=1e-5, rtol=1e-5)  # adapter adds 0 at step 0
    torch.testing.assert_close(logits["gated"], expected, atol=1e-4, rtol=1e-4)


def test_mam_training_step_generation_and_save_load(tmp_path):
    backbone = tiny("bart")
    model = backbone.model
    cfg = compose("mam", "method.length=4", "method.mid_dim=16", "method.bottleneck=8")
    applied = apply_method(model, backbone.anatomy, cfg)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    model.train()
    for _ in range(2):  # the adapter's down-projection gets a gradient once its zero-init up-projection moved
        optimizer.zero_grad()
        loss, _ = target_only_loss(model, backbone.anatomy, batch(backbone))
        loss.backward()
        optimizer.step()
    model.eval()
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    expected = {f"peftrun_deltas.{name}.{n}" for name, d in applied.deltas.items() for n, _ in d.named_parameters()}
    assert moved == expected  # prefix MLP and both adapter projections; no backbone tensor
    inputs = batch(backbone)
    settings = {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"], "max_new_tokens": 5,
                "min_new_tokens": 5, "num_beams": 2, "do_sample": False}
    assert model.generate(**settings, use_cache=True).tolist() == model.generate(**settings, use_cache=False).tolist()
    forward = {k: v for k, v in inputs.items() if k != "labels"}
    with torch.no_grad():
        reference = model(**forward).logits
    applied.save(tmp_path)
    fresh = tiny("bart")
    loaded = load_method(fresh.model, fresh.anatomy, tmp_path)
    assert loaded.param_report()["saved"] == applied.param_report()["saved"]
    with torch.no_grad():
        torch.testing.assert_close(fresh.model(**forward).logits, reference, atol=1e-5, rtol=1e-5)
