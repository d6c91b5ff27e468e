"""GPT-2 (openai-community/gpt2 ...): pre-LN decoder, fused Conv1D q/k/v, learned absolute positions.

Quirks: `attn.c_attn` is a Conv1D (weight [in, out]) whose output is [q; k; v]; the attention module applies
c_proj and resid_dropout inside; lm_head is tied to wte; <|endoftext|> is bos = eos = unk, pad = eos.
"""

from __future__ import annotations

from typing import Any

from peftrun.backbones.anatomy import Anatomy, AttentionRoles, StackRoles
from peftrun.backbones.family import PositionTable, Shape, StackShape, register_family
from peftrun.backbones.tokenizer import Specials


def shape(c: Any) -> Shape:
    ffn = c.n_inner if c.n_inner is not None else 4 * c.n_embd
    stack = StackShape(c.n_layer, c.n_head, c.n_embd // c.n_head, ffn, kv_heads=c.n_head)
    return Shape(c.n_embd, c.vocab_size, {"decoder": stack})


FAMILY = register_family(
    Anatomy(
        family="gpt2",
        kind="decoder",
        stacks=(
            StackRoles(
                name="decoder", layers="transformer.h", causal=True,
                attentions=(AttentionRoles(kind="self", module="attn", qkv="attn.c_attn", o="attn.c_proj"),),
                ffn_in="mlp.c_fc", ffn_out="mlp.c_proj",
            ),
        ),
        input_embeddings="transformer.wte",
        lm_head="lm_head",
        conv1d_projections=True,
        heads=("lm_head",),
        notes="pre-LN; c_attn is a Conv1D whose output is [q; k; v] (3 x hidden); attn applies c_proj and "
              "resid_dropout inside; lm_head is tied to wte",
    ),
    base_prefix="transformer",
    heads={"lm": "AutoModelForCausalLM", "classification": "AutoModelForSequenceClassification",
           "token": "AutoModelForTokenClassification"},
    model_types=("gpt2",),
    shape=shape,
    tokenizer_styles={"gpt2": "gpt2"},
    styles={"gpt2": Specials(tokens=("<|endoftext|>",), bos="<|endoftext|>", eos="<|endoftext|>",
                             unk="<|endoftext|>", pad="<|endoftext|>")},
    tiny=("gpt2", {"n_embd": 64, "n_layer": 2, "n_head": 4, "n_inner": 256, "n_positions": 512}),
    positions={"gpt2": PositionTable("n_positions")},
)
