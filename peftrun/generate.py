"""Batched, length-sorted generation for evaluation.

Prompts are sorted by length (longest first, so the first batch shows peak memory at once) and batched,
so padding per batch is minimal; decoder-only prompts are left-padded so every row's next token sits at
the same position. Outputs come back in the original order.

Greedy and beam search run in peftrun's own loops when they give the same tokens as `model.generate`
(task.generation.decoder=auto, and the effective generation config holds nothing the loops lack:
peftrun.decode.greedy_kwargs, peftrun.beam.beam_kwargs):
- greedy, decoder-only, more prompts than one batch: the continuous loop (finished rows leave, waiting prompts
  are prefilled into the freed slots: continuous_greedy_decode), unless min_length or forced_bos_token_id is set
  (both depend on the padded batch width) or a soft prompt is attached (its virtual tokens sit in the cache);
- other greedy batches: greedy_decode (finished rows leave the batch);
- beam search (num_beams > 1, with length penalty, early_stopping and no-repeat n-grams): beam_decode, batch by
  batch (a row whose hypotheses can no longer change leaves the batch).
Everything else, and decoder=hf, uses `model.generate`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from peftrun.beam import beam_decode, beam_kwargs
from peftrun.continuous import continuous_greedy_decode, supports_continuous
from peftrun.data import pad_left, pad_right
from peftrun.decode import greedy_decode, greedy_kwargs
from peftrun.errors import PeftrunError

DECODERS = ("auto", "hf")


def generate_texts(
    model: Any,
    tokenizer: Any,
    kind: str,
    prompts: list[list[int]],
    gen_cfg: Any,
    on_batch: Callable[[int], None] | None = None,
) -> list[str]:
    """Decoded continuations of `prompts` (token ids in the layout of peftrun.data), in input order."""
    return decode_texts(tokenizer, generate_ids(model, tokenizer, kind, prompts, gen_cfg, on_batch))


def decode_texts(tokenizer: Any, ids: list[list[int]]) -> list[str]:
    """Generated ids -> prediction texts (special tokens dropped, whitespace stripped)."""
    return [text.strip() for text in tokenizer.batch_decode(ids, skip_special_tokens=True)]


@torch.inference_mode()
def generate_ids(
    model: Any,
    tokenizer: Any,
    kind: str,
    prompts: list[list[int]],
    gen_cfg: Any,
    on_batch: Callable[[int], None] | None = None,
    **generate_kwargs: Any,
) -> list[list[int]]:
    """Generated token ids per prompt (prompt and trailing padding removed), in input order.

    generate_kwargs go to `model.generate` on top of gen_cfg (e.g. min_new_tokens, use_cache); the lean greedy
    loop takes them too when it implements them (see the module docstring)."""
    model.eval()
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    outputs: list[list[int]] = [[] for _ in prompts]
    pad_id = tokenizer.pad_token_id
    device = next(model.parameters()).device
    settings = {
        "num_beams": gen_cfg.num_beams,
        "max_new_tokens": gen_cfg.max_new_tokens,
        "length_penalty": gen_cfg.length_penalty,
        "no_repeat_ngram_size": gen_cfg.no_repeat_ngram_size,
        "do_sample": False,
        "early_stopping": gen_cfg.num_beams > 1,
        "pad_token_id": pad_id,
        "eos_token_id": tokenizer.eos_token_id,
        **generate_kwargs,
    }
    lean = _lean_kwargs(model, gen_cfg, settings)
    beam = _beam_kwargs(model, gen_cfg, settings) if lean is None else None
    continuous = None if _has_input_side_delta(model) else _continuous_kwargs(model, kind, lean, len(prompts),
                                                                                gen_cfg.batch_size)
    if continuous is not None:
        generated = continuous_greedy_decode(model, [prompts[i] for i in order], gen_cfg.batch_size, kind=kind,
                                             on_done=on_batch, **continuous)
        for index, row in zip(order, generated, strict=True):
            outputs[index] = _strip_padding(row, pad_id, tokenizer.eos_token_id)
        return outputs
    for start in range(0, len(order), gen_cfg.batch_size):
        chunk = order[start : start + gen_cfg.batch_size]
        rows = [prompts[i] for i in chunk]
        if kind == "decoder":
            ids, mask = pad_left(rows, pad_id)
        else:
            ids, mask = pad_right(rows, pad_id)
        if lean is not None:
            generated = greedy_decode(model, kind, ids.to(device), mask.to(device), **lean)
        elif beam is not None:
            generated = beam_decode(model, kind, ids.to(device), mask.to(device), **beam)
        else:
            tensor = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **settings)
            # decoder-only: drop the prompt; encoder-decoder: drop the decoder start token (BART's is EOS)
            generated = (tensor[:, ids.shape[1] :] if kind == "decoder" else tensor[:, 1:]).tolist()
        for index, row in zip(chunk, generated, strict=True):
            outputs[index] = _strip_padding(row, pad_id, tokenizer.eos_token_id)
        if on_batch is not None:
            on_batch(len(chunk))
    return outputs


def _lean_kwargs(model: Any, gen_cfg: Any, settings: dict[str, Any]) -> dict[str, Any] | None:
    """peftrun.decode.greedy_decode's arguments when the lean loop applies, else None (use model.generate)."""
    if gen_cfg.decoder not in DECODERS:
        raise PeftrunError(
            f"task.generation.decoder={gen_cfg.decoder!r}; allowed: {', '.join(DECODERS)} "
            "(auto: peftrun's greedy and beam loops where they give generate's tokens; hf: always model.generate)"
        )
    if gen_cfg.decoder == "hf":
        return None
    return greedy_kwargs(model, settings)


def _beam_kwargs(model: Any, gen_cfg: Any, settings: dict[str, Any]) -> dict[str, Any] | None:
    """peftrun.beam.beam_decode's arguments when the lean beam search applies, else None."""
    return None if gen_cfg.decoder == "hf" else beam_kwargs(model, settings)


def _continuous_kwargs(model: Any, kind: str, lean: dict[str, Any] | None, count: int,
                       batch_size: int) -> dict[str, Any] | None:
    """continuous_greedy_decode's arguments (beyond prompts, batch size and kind) when it applies, else None: the
    lean loop applies, more prompts than one batch, the decoder's positions can follow each row
    (peftrun.continuous.supports_continuous), and for decoder-only models no rule that depends on the padded
    batch width (min_length, forced_bos_token_id)."""
    if lean is None or count <= batch_size or lean["pad_token_id"] is None or not supports_continuous(model, kind):
        return None
    if kind == "decoder" and (lean["forced_bos_token_id"] is not None or
                              (lean["min_new_tokens"] is None and lean["min_length"])):
        return None
    return dict(lean)


def _has_input_side_delta(model: Any) -> bool:
    """True if an attached delta rewrites the forward's inputs (its spec says so: soft prompts): their hooks put
    virtual tokens into the KV cache that the continuous loop's cache merging does not count (the per-batch loops
    call the model as generate does, so the hooks work there)."""
    from peftrun.methods import rewrites_inputs

    return rewrites_inputs(model)


def _strip_padding(row: list[int], pad_id: int, eos_id: int) -> list[int]:
    """Cut a generated row after its first EOS (what follows is padding of a finished sequence)."""
    if eos_id in row:
        row = row[: row.index(eos_id) + 1]
    while row and row[-1] == pad_id and pad_id != eos_id:
        row = row[:-1]
    return row
