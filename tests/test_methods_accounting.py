"""Parameter accounting of named configurations on the real architectures (meta device: no weights).

Every expected number is a closed form written here from the architecture's published sizes (hidden d,
layers L, FFN width, rank r ...), never taken from the code under test. The backbone totals are the
ones /work/shared/data/README.md lists. Skipped when the shared configs are absent.
"""

from __future__ import annotations

import pytest
import torch
from conftest import require_data

from peftrun.backbones.families import anatomy_of
from peftrun.methods import apply_method

AUTO = {"lm_causal": "AutoModelForCausalLM", "lm_seq2seq": "AutoModelForSeq2SeqLM", "base": "AutoModel"}


def meta_model(name: str, auto: str, family: str):
    """The architecture `name` from shared/data/configs on the meta device, and its anatomy."""
    import transformers

    config = transformers.AutoConfig.from_pretrained(require_data("configs", name))
    with torch.device("meta"):
        model = getattr(transformers, AUTO[auto]).from_config(config)
    return model, anatomy_of(model, family)


def lora(**kw):
    return {"name": "lora", "train": "none", "top_k": 0, "deltas": [{"kind": "lora", **kw}]}


@pytest.mark.parametrize("rank", [1, 4, 8])
def test_lora_q_v_on_gpt2_medium(rank):
    model, anatomy = meta_model("gpt2-medium", "lm_causal", "gpt2")
    report = apply_method(model, anatomy, lora(rank=rank, targets=["q", "v"])).param_report()
    d, layers = 1024, 24
    expected = layers * 2 * rank * (d + d)  # per layer: q and v slices of c_attn, A [r, d] + B [d, r] each
    assert report["trainable"] == report["saved"] == expected
    assert report["per_delta"]["lora"]["per_role"] == {"q": expected // 2, "v": expected // 2}
    assert report["backbone"] == 354_823_168  # published gpt2-medium count (shared data README)
    assert report["total"] == 354_823_168 + expected
    assert report["trainable_pct"] == pytest.approx(100 * expected / 354_823_168)


def test_lora_on_the_whole_fused_qkv_of_gpt2_medium():
    model, anatomy = meta_model("gpt2-medium", "lm_causal", "gpt2")
    report = apply_method(model, anatomy, lora(rank=4, targets=["qkv"])).param_report()
    assert report["trainable"] == 24 * 4 * (1024 + 3 * 1024)  # A [r, d] + B [3d, r] per layer


def test_lora_on_selected_layers_of_gpt2_medium():
    model, anatomy = meta_model("gpt2-medium", "lm_causal", "gpt2")
    report = apply_method(model, anatomy, lora(rank=2, targets=["q", "v"], layers=[0, -1])).param_report()
    assert report["trainable"] == 2 * 2 * 2 * (1024 + 1024)


def test_lora_q_v_on_bart_base_counts_self_and_cross_attention():
    model, anatomy = meta_model("bart-base", "lm_seq2seq", "bart")
    report = apply_method(model, anatomy, lora(rank=8, targets=["q", "v"])).param_report()
    attentions = 6 + 6 + 6  # encoder self, decoder self, decoder cross
    assert report["trainable"] == attentions * 2 * 8 * (768 + 768)
    assert report["backbone"] == 139_420_416
    only_self = apply_method(*meta_model("bart-base", "lm_seq2seq", "bart"),
                             lora(rank=8, targets=["q", "v"], attention=["self"])).param_report()
    assert only_self["trainable"] == 12 * 2 * 8 * (768 + 768)


def test_lora_qkvo_on_t5_base_self_attention():
    model, anatomy = meta_model("t5-base", "lm_seq2seq", "t5")
    report = apply_method(model, anatomy, lora(rank=4, targets=["q", "k", "v", "o"],
                                               attention=["self"])).param_report()
    inner = 12 * 64  # heads x d_kv
    assert report["trainable"] == 24 * 4 * 4 * (768 + inner)
    assert report["backbone"] == 222_903_552


def test_lora_q_v_on_roberta_base_matches_the_lora_paper():
    model, anatomy = meta_model("roberta-base", "base", "bert")
    report = apply_method(model, anatomy, lora(rank=8, targets=["q", "v"])).param_report()
    assert report["trainable"] == 12 * 2 * 8 * (768 + 768) == 294_912  # LoRA paper Table 2: 0.3M
    assert report["backbone"] == 124_645_632


def test_houlsby_adapter_on_bert_base():
    model, anatomy = meta_model("bert-base-uncased", "base", "bert")
    m, d = 64, 768
    cfg = {"name": "h", "train": "none", "top_k": 0,
           "deltas": [{"kind": "adapter", "targets": ["attn", "ffn"], "bottleneck": m}]}
    report = apply_method(model, anatomy, cfg).param_report()
    per_adapter = d * m + m + m * d + d  # down W, b; up W, b
    assert report["trainable"] == 2 * 12 * per_adapter
    assert report["per_delta"]["adapter"]["per_role"] == {"attn": 12 * per_adapter, "ffn": 12 * per_adapter}
    assert report["backbone"] == 109_482_240


def test_scaled_parallel_adapter_on_bart_base_ffn():
    model, anatomy = meta_model("bart-base", "lm_seq2seq", "bart")
    cfg = {"name": "spa", "train": "none", "top_k": 0,
           "deltas": [{"kind": "adapter", "targets": ["ffn"], "insertion": "parallel", "bottleneck": 512,
                       "composition": "scaled", "scale": 4.0, "init": "lora"}]}
    report = apply_method(model, anatomy, cfg).param_report()
    assert report["trainable"] == 12 * (2 * 768 * 512 + 768 + 512)


def test_bitfit_on_bert_base():
    model, anatomy = meta_model("bert-base-uncased", "base", "bert")
    report = apply_method(model, anatomy, {"name": "b", "train": "bias", "top_k": 0, "deltas": []}).param_report()
    d, ffn, layers = 768, 3072, 12
    per_layer = 4 * d + 2 * d + ffn + d  # q k v o biases, two LayerNorm biases, FFN in and out biases
    expected = layers * per_layer + d + d  # + embedding LayerNorm bias + pooler bias
    assert report["trainable"] == report["saved"] == expected == 102_912


def test_ft_top2_on_gpt2_medium_matches_the_lora_paper():
    model, anatomy = meta_model("gpt2-medium", "lm_causal", "gpt2")
    report = apply_method(model, anatomy, {"name": "t", "train": "top_k", "top_k": 2, "deltas": []}).param_report()
    d = 1024
    per_layer = 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + 2 * d + (d * 4 * d + 4 * d) + (4 * d * d + d)
    assert report["trainable"] == 2 * per_layer == 25_192_448  # LoRA paper Table 3: FT-Top2 25.19M


def test_full_fine_tuning_of_t5_base():
    model, anatomy = meta_model("t5-base", "lm_seq2seq", "t5")
    report = apply_method(model, anatomy, {"name": "f", "train": "all", "top_k": 0, "deltas": []}).param_report()
    assert report["trainable"] == report["saved"] == report["backbone"] == 222_903_552
    assert report["per_delta"] == {}
