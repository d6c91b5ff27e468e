"""validate_method errors (before any model exists) and the conf/method YAMLs (compose, resolve, validate, apply)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from methods_tiny import FAMILIES, batch, logits, tiny
from omegaconf import OmegaConf

from peftrun.backbones.families import anatomy_for, get_family
from peftrun.config import RunConfig
from peftrun.errors import PeftrunError
from peftrun.methods import apply_method, validate_method

CONF = Path(__file__).resolve().parent.parent / "conf"
METHOD_YAMLS = sorted(p.stem for p in (CONF / "method").glob("*.yaml"))


def method(*deltas, **kw):
    return {"name": "t", "train": "none", "top_k": 0, "deltas": list(deltas), **kw}


@pytest.mark.parametrize(
    ("family", "cfg", "pattern"),
    [
        ("gpt2", method({"kind": "lroa"}), r"deltas\[0\]\.kind='lroa': unknown delta \(known: .*lora.*"
                                           r"did you mean 'lora'"),
        ("gpt2", method({"kind": "lora", "rnak": 4}), r"unknown key 'rnak'.*allowed: rank, alpha.*did you mean 'rank'"),
        ("gpt2", method({"kind": "lora", "rank": "four"}), r"deltas\[0\]\.rank='four'"),
        ("bart", method({"kind": "lora", "targets": ["query"]}),
         r"unknown role 'query' \(allowed: q, k, v, o, ffn_in, ffn_gate, ffn_out, qkv\)"),
        ("bart", method({"kind": "lora", "targets": ["qkv"]}), r"bart has separate q, k, v.*targets=\[q, k, v\]"),
        ("gpt2", method({"kind": "lora", "attention": ["cross"]}), r"attention=\['cross'\] selects no attention.*self"),
        ("t5", method({"kind": "lora", "stacks": ["decoderr"]}), r"stacks has 'decoderr'.*\['encoder', 'decoder'\]"),
        ("gpt2", method({"kind": "lora", "rank": 0}), r"rank=0"),
        ("bert", method({"kind": "adapter", "targets": ["mlp"]}), r"targets=\['mlp'\].*attn, ffn"),
        ("bert", method({"kind": "adapter", "insertion": "parralel"}), r"insertion='parralel'.*sequential, parallel"),
        ("bert", method({"kind": "adapter", "bottleneck": None}), r"set one"),
        ("bert", method(train="some"), r"method\.train='some'.*none, all, head, bias, top_k"),
        ("bert", method(train="top_k"), r"method\.top_k=0"),
        ("bert", method("lora"), r"each delta needs a `kind`"),
        ("bert", method(rnak=4), r"method\.rnak: Key 'rnak' not in 'MethodConfig'"),
        ("bert", method(rank="x"), r"method\.rank: Value 'x'"),
    ],
)
def test_validate_method_names_the_bad_key(family, cfg, pattern):
    with pytest.raises(PeftrunError, match=pattern) as err:
        validate_method(cfg, anatomy_for(family))
    assert "\n" not in str(err.value)


def test_validate_method_accepts_a_combination_and_names_duplicates():
    items = validate_method(method({"kind": "lora"}, {"kind": "adapter"}, {"kind": "adapter", "targets": ["ffn"]}),
                            anatomy_for("bart"))
    assert [i.name for i in items] == ["lora", "adapter", "adapter_1"]


def test_a_layer_out_of_range_is_refused_when_the_model_exists():
    bb = tiny("gpt2")
    with pytest.raises(PeftrunError, match=r"layer 5 does not exist in the decoder stack \(2 layers"):
        apply_method(bb.model, bb.anatomy, method({"kind": "lora", "layers": [5]}))


def compose_method(name: str, *overrides: str):
    """conf/method/<name>.yaml under the run schema, as Hydra places it (package `method`), plus overrides."""
    root = OmegaConf.merge(OmegaConf.structured(RunConfig), {"method": OmegaConf.load(CONF / "method" / f"{name}.yaml")},
                           OmegaConf.from_dotlist(list(overrides)))
    return root.method



def test_method_knobs_are_one_override_away():
    cfg = compose_method("lora", "method.rank=16", "method.targets=[q,k,v]", "method.layers=[0]")
    (item,) = OmegaConf.to_container(cfg.deltas, resolve=True)
    assert (item["rank"], item["targets"], item["layers"]) == (16, ["q", "k", "v"], [0])
    spa = OmegaConf.to_container(compose_method("scaled_parallel_adapter", "method.scale=2").deltas, resolve=True)
    assert spa[0]["scale"] == 2.0


REFUSED = {("head_only", "gpt2"), ("head_only", "bart"), ("head_only", "t5"), ("head_only", "llama")}
REFUSED_BEFORE_LOADING = {("bitfit", "t5"), ("bitfit", "llama")}  # bias-free families


@pytest.mark.parametrize("name", METHOD_YAMLS)
@pytest.mark.parametrize("family", FAMILIES)
def test_every_method_yaml_validates_and_applies_to_every_tiny_family(name, family):
    cfg = compose_method(name, "method.bottleneck=8") if "adapter" in name else compose_method(name)
    if (name, family) in REFUSED_BEFORE_LOADING:
        with pytest.raises(PeftrunError, match=rf"^method.train=bias \(BitFit\) .* but {family} has none; "):
            validate_method(cfg, anatomy_for(family))
        return
    validate_method(cfg, anatomy_for(family))
    bb = tiny(family)
    if (name, family) in REFUSED:  # nothing to train: T5 has no biases, tied LM heads are no separate head
        with pytest.raises(PeftrunError, match="selects no parameter"):
            apply_method(bb.model, bb.anatomy, cfg)
        return
    inputs = batch(bb)
    applied = apply_method(bb.model, bb.anatomy, cfg)
    report = applied.param_report()
    evaluation_only = cfg.train == "none" and not cfg.deltas  # method=icl: nothing trains, by design
    assert report["trainable"] == 0 if evaluation_only else report["trainable"] > 0
    assert torch.isfinite(logits(bb.model, inputs)).all()
    shape = get_family(family).shape(bb.model.config)
    for delta in applied.deltas.values():  # each delta's declared closed form is its exact count
        closed_form = delta.spec.parameter_count(bb.anatomy, shape)
        assert closed_form is None or closed_form == sum(p.numel() for p in delta.parameters())


def test_hydra_composes_a_method_sweep_point():
    if not list((CONF / "backbone").glob("*.yaml")) or not list((CONF / "task").glob("*.yaml")):
        pytest.skip("conf/backbone and conf/task are not written yet")
    from hydra import compose, initialize_config_dir

    from peftrun.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose("config", overrides=["method=lora", "method.rank=8", "backbone=tiny-bart"])
    validate_method(cfg.method, anatomy_for(cfg.backbone.family))
    assert OmegaConf.to_container(cfg.method.deltas, resolve=True)[0]["rank"] == 8
