"""Llama and Mistral (SmolLM2, TinyLlama, Llama 2/3, Mistral 7B ...): pre-RMSNorm decoders with rotary positions.

Quirks: separate q/k/v/o with grouped-query attention (num_key_value_heads <= num_attention_heads: each key/value
head serves a group of query heads, so k_proj/v_proj are kv_heads x head_dim wide and a prefix has one key/value
per key/value head); a gated SiLU FFN down(silu(gate(x)) * up(x)) whose three projections are roles
(ffn_in = up, ffn_gate = gate, ffn_out = down); RMSNorm and no biases (attention_bias / mlp_bias false: BitFit
has nothing to train); rotary positions from `model.rotary_emb` (no absolute table: no length limit from
positions); embeddings usually tied (SmolLM2). Qwen2 (q/k/v biases) would be its own module reusing this anatomy.
"""

from __future__ import annotations

from typing import Any

from peftrun.backbones.anatomy import Anatomy, StackRoles
from peftrun.backbones.families._common import attention
from peftrun.backbones.family import Shape, StackShape, register_family
from peftrun.backbones.tokenizer import Specials


def shape(c: Any) -> Shape:
    heads = c.num_attention_heads
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // heads
    kv_heads = getattr(c, "num_key_value_heads", None) or heads
    stack = StackShape(c.num_hidden_layers, heads, head_dim, c.intermediate_size, kv_heads=kv_heads)
    return Shape(c.hidden_size, c.vocab_size, {"decoder": stack})


FAMILY = register_family(
    Anatomy(
        family="llama",
        kind="decoder",
        stacks=(
            StackRoles(
                name="decoder", layers="model.layers", causal=True,
                attentions=(attention("self", "self_attn", "q_proj", "k_proj", "v_proj", "o_proj"),),
                ffn_in="mlp.up_proj", ffn_gate="mlp.gate_proj", ffn_out="mlp.down_proj",
            ),
        ),
        input_embeddings="model.embed_tokens",
        lm_head="lm_head",
        heads=("lm_head",),
        biases=False,
        rotary="model.rotary_emb",
        notes="pre-RMSNorm; GQA (k/v width = kv_heads x head_dim); gated SiLU FFN; rotary positions; no biases",
    ),
    base_prefix="model",
    heads={"lm": "AutoModelForCausalLM", "classification": "AutoModelForSequenceClassification",
           "token": "AutoModelForTokenClassification"},
    model_types=("llama", "mistral"),
    shape=shape,
    tokenizer_styles={"llama": "llama", "mistral": "llama"},
    # Llama's SentencePiece ids (<unk>=0 <s>=1 </s>=2), no template (the data layout appends eos itself), pad = eos.
    styles={"llama": Specials(tokens=("<unk>", "<s>", "</s>"), bos="<s>", eos="</s>", unk="<unk>", pad="</s>")},
    # GQA included: 4 query heads share 2 key/value heads. Tied embeddings as SmolLM2.
    tiny=("llama", {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                    "intermediate_size": 128, "max_position_embeddings": 512, "tie_word_embeddings": True}),
)
