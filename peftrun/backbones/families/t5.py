"""T5 (google-t5/t5-small ...): pre-LN encoder-decoder with RMS norms, no biases, relative position buckets.

Quirks: the inner attention width is heads x d_kv (not d_model); a relative position bias lives in the first
layer of each stack (no length limit from positions); gated FFNs (wi_0/wi_1, T5 v1.1) are not described.
"""

from __future__ import annotations

from typing import Any

from peftrun.backbones.anatomy import Anatomy, StackRoles
from peftrun.backbones.families._common import attention
from peftrun.backbones.family import Shape, StackShape, register_family
from peftrun.backbones.tokenizer import Specials


def shape(c: Any) -> Shape:
    return Shape(c.d_model, c.vocab_size, {
        "encoder": StackShape(c.num_layers, c.num_heads, c.d_kv, c.d_ff, kv_heads=c.num_heads),
        "decoder": StackShape(c.num_decoder_layers, c.num_heads, c.d_kv, c.d_ff, kv_heads=c.num_heads),
    })


FAMILY = register_family(
    Anatomy(
        family="t5",
        kind="encoder-decoder",
        stacks=(
            StackRoles(
                name="encoder", layers="encoder.block", causal=False,
                attentions=(attention("self", "layer.0.SelfAttention", "q", "k", "v", "o"),),
                ffn_in="layer.1.DenseReluDense.wi", ffn_out="layer.1.DenseReluDense.wo",
            ),
            StackRoles(
                name="decoder", layers="decoder.block", causal=True,
                attentions=(
                    attention("self", "layer.0.SelfAttention", "q", "k", "v", "o"),
                    attention("cross", "layer.1.EncDecAttention", "q", "k", "v", "o"),
                ),
                ffn_in="layer.2.DenseReluDense.wi", ffn_out="layer.2.DenseReluDense.wo",
            ),
        ),
        input_embeddings="shared",
        lm_head="lm_head",
        heads=("lm_head",),
        biases=False,
        notes="pre-LN (RMS norm, no biases); inner attention width = heads x d_kv; relative position bias in "
              "the first layer of each stack; gated FFNs (wi_0/wi_1, T5 v1.1) are not described",
    ),
    base_prefix="",
    heads={"lm": "AutoModelForSeq2SeqLM", "classification": "AutoModelForSequenceClassification",
           "token": "AutoModelForTokenClassification"},
    model_types=("t5",),
    shape=shape,
    tokenizer_styles={"t5": "t5"},
    styles={"t5": Specials(tokens=("<pad>", "</s>", "<unk>"), eos="</s>", unk="<unk>", pad="<pad>",
                           single="$A </s>", pair="$A </s> $B </s>", decoder_start="<pad>")},
    tiny=("t5", {"d_model": 64, "d_kv": 16, "num_heads": 4, "num_layers": 2, "num_decoder_layers": 2, "d_ff": 128,
                 "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128,
                 "feed_forward_proj": "relu"}),
)
