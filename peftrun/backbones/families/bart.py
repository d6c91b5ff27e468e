"""BART (facebook/bart-base ...): post-LN encoder-decoder, separate q/k/v, learned absolute positions.

Quirks: the layer applies dropout + residual + LayerNorm after each attention and after fc2; encoder, decoder
and lm_head share model.shared; the position table has 2 extra rows for its own offset (usable: all of
max_position_embeddings). Its tokenizer convention ("bart": <s> x </s>) is RoBERTa's too.
"""

from __future__ import annotations

from typing import Any

from peftrun.backbones.anatomy import Anatomy, StackRoles
from peftrun.backbones.families._common import attention
from peftrun.backbones.family import PositionTable, Shape, StackShape, register_family
from peftrun.backbones.tokenizer import Specials


def shape(c: Any) -> Shape:
    def stack(layers: int, heads: int, ffn: int) -> StackShape:
        return StackShape(layers, heads, c.d_model // heads, ffn, kv_heads=heads)

    return Shape(c.d_model, c.vocab_size, {
        "encoder": stack(c.encoder_layers, c.encoder_attention_heads, c.encoder_ffn_dim),
        "decoder": stack(c.decoder_layers, c.decoder_attention_heads, c.decoder_ffn_dim),
    })


_SELF = attention("self", "self_attn", "q_proj", "k_proj", "v_proj", "out_proj")
FAMILY = register_family(
    Anatomy(
        family="bart",
        kind="encoder-decoder",
        stacks=(
            StackRoles(name="encoder", layers="model.encoder.layers", causal=False, attentions=(_SELF,),
                       ffn_in="fc1", ffn_out="fc2"),
            StackRoles(
                name="decoder", layers="model.decoder.layers", causal=True,
                attentions=(_SELF, attention("cross", "encoder_attn", "q_proj", "k_proj", "v_proj", "out_proj")),
                ffn_in="fc1", ffn_out="fc2",
            ),
        ),
        input_embeddings="model.shared",
        lm_head="lm_head",
        heads=("lm_head",),
        notes="post-LN; the layer applies dropout + residual + LayerNorm after each attention and after fc2; "
              "encoder, decoder and lm_head share model.shared",
    ),
    base_prefix="model",
    heads={"lm": "AutoModelForSeq2SeqLM", "classification": "AutoModelForSequenceClassification"},
    model_types=("bart",),
    shape=shape,
    tokenizer_styles={"bart": "bart"},
    styles={"bart": Specials(tokens=("<s>", "<pad>", "</s>", "<unk>", "<mask>"), bos="<s>", eos="</s>", unk="<unk>",
                             pad="<pad>", mask="<mask>", cls="<s>", sep="</s>", roberta_processor=True,
                             decoder_start="</s>")},
    tiny=("bart", {"d_model": 64, "encoder_layers": 2, "decoder_layers": 2, "encoder_attention_heads": 4,
                   "decoder_attention_heads": 4, "encoder_ffn_dim": 128, "decoder_ffn_dim": 128,
                   "max_position_embeddings": 512}),
    positions={"bart": PositionTable("max_position_embeddings")},
)
