"""Tiny offline backbones (tiny-gpt2, tiny-bart, tiny-t5, tiny-bert): real architectures at toy size.

Each is its family's transformers class built from a small config (hidden 64, 2 layers per stack,
4 heads of 16, FFN 128/256, 512 positions) with weights drawn from a fixed seed (identical in every
process) and a byte-level BPE tokenizer trained locally on an embedded corpus (see tokenizer.py). The
config's vocab_size is the tokenizer's size and its special ids are the tokenizer's.
`backbone.tiny` overrides any config.json key (e.g. `backbone.tiny.n_layer=4`); unknown keys are refused.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from peftrun.backbones.families import get_family
from peftrun.backbones.tokenizer import STYLE_OF_MODEL_TYPE, STYLES, load_tiny_tokenizer, special_token_ids
from peftrun.errors import PeftrunError

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedTokenizerFast

# family -> (model_type, config kwargs). Dropouts keep the real models' defaults (0.1): call model.eval() to compare.
TINY_CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    "gpt2": ("gpt2", {"n_embd": 64, "n_layer": 2, "n_head": 4, "n_inner": 256, "n_positions": 512}),
    "bart": ("bart", {"d_model": 64, "encoder_layers": 2, "decoder_layers": 2, "encoder_attention_heads": 4,
                      "decoder_attention_heads": 4, "encoder_ffn_dim": 128, "decoder_ffn_dim": 128,
                      "max_position_embeddings": 512}),
    "t5": ("t5", {"d_model": 64, "d_kv": 16, "num_heads": 4, "num_layers": 2, "num_decoder_layers": 2, "d_ff": 128,
                  "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128,
                  "feed_forward_proj": "relu"}),
    "bert": ("bert", {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 256,
                      "max_position_embeddings": 512, "type_vocab_size": 2}),
}

# Keys decided by the tokenizer, not by the user.
_TOKENIZER_KEYS = ("vocab_size", "pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id")


def _config_class(model_type: str) -> type:
    from transformers import CONFIG_MAPPING

    return CONFIG_MAPPING[model_type]


def check_overrides(family: str, overrides: dict[str, Any]) -> None:
    """Refuse `backbone.tiny` keys the family's config does not have, or that the tokenizer decides."""
    model_type, _ = _tiny_entry(family)
    cls = _config_class(model_type)
    known = {f.name for f in dataclasses.fields(cls)} | set(getattr(cls, "attribute_map", {}))
    for key in overrides:
        if key in _TOKENIZER_KEYS:
            raise PeftrunError(f"backbone.tiny.{key} is set by the tiny tokenizer and cannot be overridden")
        if key not in known:
            raise PeftrunError(
                f"backbone.tiny.{key}: {cls.__name__} has no such key; e.g. {', '.join(sorted(_tiny_entry(family)[1]))}"
            )


def _tiny_entry(family: str) -> tuple[str, dict[str, Any]]:
    if family not in TINY_CONFIGS:
        raise PeftrunError(
            f"no tiny backbone for family {family!r}; tiny families: {', '.join(sorted(TINY_CONFIGS))}"
        )
    return TINY_CONFIGS[family]


def tiny_tokenizer(family: str, cache_dir: str) -> PreTrainedTokenizerFast:
    """The family's tiny tokenizer (trained on first use, then read from `<cache_dir>/tokenizers/`)."""
    model_type, _ = _tiny_entry(family)
    return load_tiny_tokenizer(STYLE_OF_MODEL_TYPE[model_type], cache_dir)


def tiny_config(family: str, tokenizer: PreTrainedTokenizerFast, overrides: dict[str, Any] | None = None,
                num_labels: int | None = None) -> PretrainedConfig:
    """The tiny config of `family`: defaults, then `overrides`, vocab and special ids from `tokenizer`."""
    model_type, defaults = _tiny_entry(family)
    overrides = dict(overrides or {})
    check_overrides(family, overrides)
    encoder_decoder = get_family(family).anatomy.is_encoder_decoder
    ids = special_token_ids(tokenizer, STYLES[STYLE_OF_MODEL_TYPE[model_type]], encoder_decoder)
    kwargs: dict[str, Any] = {**defaults, **overrides, "vocab_size": len(tokenizer), **ids}
    if num_labels is not None:
        kwargs["num_labels"] = num_labels
    try:
        return _config_class(model_type)(**kwargs)
    except (TypeError, ValueError) as err:
        raise PeftrunError(f"tiny-{family} config with overrides {overrides}: {err}") from err

