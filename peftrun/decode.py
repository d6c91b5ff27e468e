"""Lean greedy decoding for evaluation: a KV-cached argmax loop that drops finished rows from the batch.

`model.generate` keeps every row of a batch until the last one ends: a row that emitted EOS is fed padding
and computed at every later step. Here a finished row leaves the batch: its rows of the KV cache, the
attention mask, the positions and (encoder-decoder) the encoder states are index-selected away, so step t
costs as many rows as are still unfinished. The per-step work outside the forward is one argmax and,
when a length rule applies at that step, one masked fill of the logits.

The tokens equal `model.generate(do_sample=False, num_beams=1)`'s for the same inputs, as long as the
effective generation config asks for nothing beyond what this loop implements (`greedy_kwargs` checks
that; anything else goes to `model.generate`). Mirrored from transformers' generate:

- decoder-only: position ids cumsum(mask) - 1 (0 on left padding), the attention mask dropped when the
  batch has no padding, `logits_to_keep=1` on the prefill; encoder-decoder: the encoder runs once, the
  decoder starts from `decoder_start_token_id`; a DynamicCache (EncoderDecoderCache for encoder-decoders).
- logits rules at step t (cur_len = L0 + t, L0 = the padded prompt width for decoder-only, 1 for
  encoder-decoder), in generate's processor order: EOS at -inf while cur_len < min_length (min_new_tokens,
  when given, sets min_length = L0 + min_new_tokens); forced_bos_token_id at cur_len == 1; forced EOS at the
  last step (cur_len == L0 + max_new_tokens - 1); suppress_tokens at -inf.

Numerics: a row's logits do not depend on the other rows in exact arithmetic; in floating point a GEMM
over fewer rows may round differently, so on a real model a near-tie can rarely flip (the benchmark counts
such rows: scripts/bench_generate.py).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping
from typing import Any

import torch

# Generation-config fields with their neutral values: any other effective value asks for a logits processor,
# a decoding mode or an output this loop does not implement, and generation falls back to model.generate.
_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "num_beams": (None, 1),
    "num_beam_groups": (None, 1),
    "do_sample": (None, False),
    "num_return_sequences": (None, 1),
    "penalty_alpha": (None,),
    "dola_layers": (None,),
    "repetition_penalty": (None, 1.0),
    "encoder_repetition_penalty": (None, 1.0),
    "no_repeat_ngram_size": (None, 0),
    "encoder_no_repeat_ngram_size": (None, 0),
    "bad_words_ids": (None,),
    "sequence_bias": (None,),
    "guidance_scale": (None, 1.0),
    "remove_invalid_values": (None, False),
    "renormalize_logits": (None, False),
    "exponential_decay_length_penalty": (None,),
    "begin_suppress_tokens": (None,),
    "forced_decoder_ids": (None,),
    "watermarking_config": (None,),
    "stop_strings": (None,),
    "max_time": (None,),
    "use_cache": (None, True),
    "cache_implementation": (None, "dynamic"),
    "prefill_chunk_size": (None,),
    "prompt_lookup_num_tokens": (None,),
    "assistant_early_exit": (None,),
    "token_healing": (None, False),
    "return_dict_in_generate": (None, False),
    "output_scores": (None, False),
    "output_logits": (None, False),
    "output_attentions": (None, False),
    "output_hidden_states": (None, False),
}
# Fields this loop implements (passed to greedy_decode) or reads.
_IMPLEMENTED = (
    "max_new_tokens", "min_new_tokens", "min_length", "suppress_tokens", "forced_bos_token_id",
    "forced_eos_token_id", "eos_token_id", "pad_token_id", "bos_token_id", "decoder_start_token_id",
)
# Fields that cannot change a greedy search: beam-search scoring, sampling warpers, assisted decoding, metadata.
_IRRELEVANT = (
    "max_length", "length_penalty", "early_stopping", "temperature", "top_k", "top_p", "typical_p", "min_p",
    "top_h", "epsilon_cutoff", "eta_cutoff", "diversity_penalty", "num_assistant_tokens",
    "num_assistant_tokens_schedule", "assistant_confidence_threshold", "assistant_lookbehind", "target_lookbehind",
    "max_matching_ngram_size", "is_assistant", "compile_config", "disable_compile", "cache_config",
    "transformers_version", "_from_model_config", "_commit_hash", "trust_remote_code", "low_memory",
)


def greedy_kwargs(model: Any, settings: Mapping[str, Any]) -> dict[str, Any] | None:
    """Keyword arguments of `greedy_decode` equivalent to `model.generate(**settings)`, or None if the effective
    generation config (model.generation_config overridden by `settings`) needs something this loop lacks.

    `settings` must hold max_new_tokens (without it generate's length comes from max_length, which is not mirrored).
    """
    config = effective_config(model, settings)
    if config is None or any(config.get(name) not in neutral for name, neutral in _NEUTRAL.items()):
        return None
    return shared_kwargs(model, config)


def effective_config(model: Any, settings: Mapping[str, Any]) -> dict[str, Any] | None:
    """model.generation_config's non-default fields overridden by `settings`, or None when either holds a field
    nobody reviewed for the lean loops (a model kwarg, a new option) or `settings` lacks max_new_tokens (without
    it generate's length comes from max_length, which is not mirrored)."""
    if settings.get("max_new_tokens") is None:
        return None
    known = set(_NEUTRAL) | set(_IMPLEMENTED) | set(_IRRELEVANT)
    if set(settings) - known:  # a model kwarg or an unreviewed option
        return None
    base = getattr(model, "generation_config", None)
    defaults = base.to_diff_dict() if base is not None else {}
    if set(defaults) - known:
        return None
    return {**defaults, **settings}


def shared_kwargs(model: Any, config: Mapping[str, Any]) -> dict[str, Any] | None:
    """The length / token arguments every lean loop takes, from an effective config; None when an
    encoder-decoder has no decoder start token (generate then raises its own error)."""
    start = config.get("decoder_start_token_id")
    if start is None:  # generate's rule
        start = config.get("bos_token_id")
    if start is None and getattr(model.config, "is_encoder_decoder", False):
        return None
    return {
        "max_new_tokens": config["max_new_tokens"],
        "eos_token_id": config.get("eos_token_id"),
        "pad_token_id": config.get("pad_token_id"),
        "decoder_start_token_id": start,
        "min_new_tokens": config.get("min_new_tokens"),
        "min_length": config.get("min_length"),
        "suppress_tokens": config.get("suppress_tokens"),
        "forced_bos_token_id": config.get("forced_bos_token_id"),
        "forced_eos_token_id": config.get("forced_eos_token_id"),
    }


def _ids(value: int | Iterable[int] | None) -> list[int]:
    if value is None:
        return []
    if isinstance(value, int):
        return [value]
    return [int(v) for v in value]


class _Rules:
    """The length / suppression rules on the logits (module docstring), decided per step from t alone."""

    def __init__(self, start_length: int, max_new_tokens: int, eos: list[int], min_new_tokens: int | None,
                 min_length: int | None, suppress: list[int], forced_bos: int | None, forced_eos: list[int]) -> None:
        self.start_length = start_length
        self.min_length = start_length + min_new_tokens if min_new_tokens is not None else (min_length or 0)
        self.max_length = start_length + max_new_tokens
        self.eos, self.suppress, self.forced_bos, self.forced_eos = eos, suppress, forced_bos, forced_eos

    def apply(self, logits: torch.Tensor, step: int) -> torch.Tensor:
        """(b, V) logits of generated token `step` (0-based) after generate's processors, in its order."""
        cur_len = self.start_length + step
        if self.eos and cur_len < self.min_length:
            logits = logits.clone()
            logits[:, self.eos] = float("-inf")
        if self.forced_bos is not None and cur_len == 1:
            logits = torch.full_like(logits, float("-inf"))
            logits[:, self.forced_bos] = 0
        if self.forced_eos and cur_len == self.max_length - 1:
            logits = torch.full_like(logits, float("-inf"))
            logits[:, self.forced_eos] = 0
        if self.suppress:
            logits = logits.clone()
            logits[:, self.suppress] = float("-inf")
        return logits


_ACCEPTS_LOGITS_TO_KEEP: dict[type, bool] = {}


def _accepts_logits_to_keep(model: Any) -> bool:
    cls = type(model)
    if cls not in _ACCEPTS_LOGITS_TO_KEEP:
        _ACCEPTS_LOGITS_TO_KEEP[cls] = "logits_to_keep" in inspect.signature(model.forward).parameters
    return _ACCEPTS_LOGITS_TO_KEEP[cls]


@torch.inference_mode()
def greedy_decode(
    model: Any,
    kind: str,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    max_new_tokens: int,
    eos_token_id: int | list[int] | None,
    pad_token_id: int | None,
    decoder_start_token_id: int | None = None,
    min_new_tokens: int | None = None,
    *,
    min_length: int | None = None,
    suppress_tokens: list[int] | None = None,
    forced_bos_token_id: int | None = None,
    forced_eos_token_id: int | list[int] | None = None,
) -> list[list[int]]:
    """Greedy continuations of a batch, one list of new token ids per row (through its first EOS, no padding).

    input_ids, attention_mask: (B, L); decoder-only prompts left-padded (peftrun.data.pad_left), encoder inputs
    right-padded. pad_token_id is accepted for parity with generate's arguments: finished rows leave the batch,
    so nothing is ever padded. The other arguments mean what they mean to generate (rules: module docstring);
    as there, min_new_tokens, when not None, replaces min_length.
    """
    from transformers import DynamicCache, EncoderDecoderCache
    from transformers.modeling_outputs import BaseModelOutput

    batch = input_ids.shape[0]
    out: list[list[int]] = [[] for _ in range(batch)]
    if batch == 0 or max_new_tokens <= 0:
        return out
    encoder_decoder = kind == "encoder-decoder"
    if encoder_decoder and decoder_start_token_id is None:
        raise ValueError("encoder-decoder decoding needs decoder_start_token_id (the model's or its bos_token_id)")
    eos = _ids(eos_token_id)
    rules = _Rules(1 if encoder_decoder else input_ids.shape[1], max_new_tokens, eos, min_new_tokens, min_length,
                   _ids(suppress_tokens), forced_bos_token_id, _ids(forced_eos_token_id))
    eos_ids = torch.tensor(eos, dtype=torch.long, device=input_ids.device)
    cache_config = model.config.get_text_config(decoder=True)
    call: dict[str, Any] = {"use_cache": True, "return_dict": True}
    if encoder_decoder:
        encoded = model.get_encoder()(input_ids=input_ids, attention_mask=attention_mask, return_dict=True)
        cache = EncoderDecoderCache(DynamicCache(config=cache_config), DynamicCache(config=cache_config))
        mask = attention_mask
        tokens = torch.full((batch, 1), decoder_start_token_id, dtype=torch.long, device=input_ids.device)
        call.update(encoder_outputs=encoded, attention_mask=mask, decoder_input_ids=tokens)
    else:
        cache = DynamicCache(config=cache_config)
        positions = (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)  # (B, L)
        # generate drops an all-ones mask (sdpa then runs maskless); keep its choice for the whole batch
        mask = None if bool((attention_mask == 1).all()) else attention_mask
        call.update(input_ids=input_ids, attention_mask=mask, position_ids=positions)
        positions = positions[:, -1:]
    if _accepts_logits_to_keep(model):
        call["logits_to_keep"] = 1
    rows = torch.arange(batch)  # original row of each live row
    for step in range(max_new_tokens):
        output = model(**call, cache=cache)
        cache = output.cache
        logits = output.logits[:, -1, :]  # (b, V)
        chosen = rules.apply(logits, step).argmax(dim=-1)  # (b,)
        for row, token in zip(rows.tolist(), chosen.tolist(), strict=True):
            out[row].append(token)
        if step == max_new_tokens - 1:
            break
        live = ~torch.isin(chosen, eos_ids) if eos else None
        if live is not None and not bool(live.all()):
            keep = live.nonzero().squeeze(1)
            if keep.numel() == 0:
                break
            rows, chosen = rows[keep.cpu()], chosen[keep]
            cache.batch_select_indices(keep)
            if mask is not None:
                mask = mask[keep]
            if encoder_decoder:
                encoded = BaseModelOutput(last_hidden_state=encoded.last_hidden_state[keep])
            else:
                positions = positions[keep]
        tokens = chosen[:, None]
        if encoder_decoder:
            call.update(encoder_outputs=encoded, attention_mask=mask, decoder_input_ids=tokens)
        else:
            positions = positions + 1
            if mask is not None:
                mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
            call.update(input_ids=tokens, attention_mask=mask, position_ids=positions)
    return out
