"""Tiny offline backbones (tiny-gpt2, tiny-bart, tiny-t5, tiny-bert, tiny-llama): real architectures at toy size.

Each is its family's transformers class built from the small config its family module declares (`Family.tiny`:
hidden 64, 2 layers per stack, 4 heads of 16, FFN 128/256, 512 positions) with weights drawn from a fixed seed (identical in every
process) and a byte-level BPE tokenizer trained locally on an embedded corpus (see tokenizer.py). The
config's vocab_size is the tokenizer's size and its special ids are the tokenizer's.
`backbone.tiny` overrides any config.json key (e.g. `backbone.tiny.n_layer=4`); unknown keys are refused.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from peftrun.backbones.families import FAMILIES, get_family, style_name_of
from peftrun.backbones.tokenizer import load_tiny_tokenizer, special_token_ids, style_for
from peftrun.errors import PeftrunError

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedTokenizerFast

# family -> (model_type, config kwargs), read from the family modules. Dropouts keep the real models' defaults
# (0.1): call model.eval() to compare.
TINY_CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {name: f.tiny for name, f in FAMILIES.items() if f.tiny}

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
    return load_tiny_tokenizer(style_name_of(model_type), cache_dir)


def tiny_config(family: str, tokenizer: PreTrainedTokenizerFast, overrides: dict[str, Any] | None = None,
                num_labels: int | None = None) -> PretrainedConfig:
    """The tiny config of `family`: defaults, then `overrides`, vocab and special ids from `tokenizer`."""
    model_type, defaults = _tiny_entry(family)
    overrides = dict(overrides or {})
    check_overrides(family, overrides)
    encoder_decoder = get_family(family).anatomy.is_encoder_decoder
    ids = special_token_ids(tokenizer, style_for(model_type), encoder_decoder)
    kwargs: dict[str, Any] = {**defaults, **overrides, "vocab_size": len(tokenizer), **ids}
    if num_labels is not None:
        kwargs["num_labels"] = num_labels
    try:
        return _config_class(model_type)(**kwargs)
    except (TypeError, ValueError) as err:
        raise PeftrunError(f"tiny-{family} config with overrides {overrides}: {err}") from err

