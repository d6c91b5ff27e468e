"""BERT and RoBERTa (google-bert/bert-base-uncased, FacebookAI/roberta-base ...): post-LN encoders.

Quirks: the attention module (attention.self) returns the context BEFORE the o projection
(attention.output.dense, followed by dropout + residual + LayerNorm); RoBERTa shares the anatomy with base
prefix `roberta.`, uses BART's tokenizer convention and loses 2 position rows to its padding offset.
"""

from __future__ import annotations

from typing import Any

from peftrun.backbones.anatomy import Anatomy, AttentionRoles, StackRoles
from peftrun.backbones.family import PositionTable, Shape, StackShape, register_family
from peftrun.backbones.tokenizer import Specials


def shape(c: Any) -> Shape:
    heads = c.num_attention_heads
    stack = StackShape(c.num_hidden_layers, heads, c.hidden_size // heads, c.intermediate_size, kv_heads=heads)
    return Shape(c.hidden_size, c.vocab_size, {"encoder": stack})


FAMILY = register_family(
    Anatomy(
        family="bert",
        kind="encoder",
        stacks=(
            StackRoles(
                name="encoder", layers="bert.encoder.layer", causal=False,
                attentions=(AttentionRoles(kind="self", module="attention.self", q="attention.self.query",
                                           k="attention.self.key", v="attention.self.value",
                                           o="attention.output.dense"),),
                ffn_in="intermediate.dense", ffn_out="output.dense",
            ),
        ),
        input_embeddings="bert.embeddings.word_embeddings",
        lm_head="cls.predictions.decoder",
        heads=("cls",),
        notes="post-LN; the attention module (attention.self) returns the context BEFORE the o projection "
              "(attention.output.dense, followed by dropout + residual + LayerNorm); RoBERTa shares this entry "
              "with base prefix roberta.",
    ),
    base_prefix="bert",
    heads={"lm": "AutoModelForMaskedLM", "classification": "AutoModelForSequenceClassification",
           "token": "AutoModelForTokenClassification"},
    model_types=("bert", "roberta"),
    shape=shape,
    tokenizer_styles={"bert": "bert", "roberta": "bart"},
    styles={"bert": Specials(tokens=("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"), unk="[UNK]", pad="[PAD]",
                             mask="[MASK]", cls="[CLS]", sep="[SEP]", single="[CLS] $A [SEP]",
                             pair="[CLS] $A [SEP] $B:1 [SEP]:1", token_type_ids=True)},
    tiny=("bert", {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 256,
                   "max_position_embeddings": 512, "type_vocab_size": 2}),
    positions={"bert": PositionTable("max_position_embeddings"),
               "roberta": PositionTable("max_position_embeddings", offset=2)},  # positions start at pad + 1 = 2
)
