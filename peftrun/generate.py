"""Batched, length-sorted generation for evaluation.

Prompts are sorted by length (longest first, so the first batch shows peak memory at once) and batched,
so padding per batch is minimal; decoder-only prompts are left-padded so every row's next token sits at
the same position. Outputs come back in the original order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from peftrun.data import pad_left, pad_right


def generate_texts(
    model: Any,
    tokenizer: Any,
    kind: str,
    prompts: list[list[int]],
    gen_cfg: Any,
    on_batch: Callable[[int], None] | None = None,
) -> list[str]:
    """Decoded continuations of `prompts` (token ids in the layout of peftrun.data), in input order."""
    ids = generate_ids(model, tokenizer, kind, prompts, gen_cfg, on_batch)
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

    generate_kwargs go to `model.generate` on top of gen_cfg (e.g. min_new_tokens, use_cache)."""
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
    for start in range(0, len(order), gen_cfg.batch_size):
        chunk = order[start : start + gen_cfg.batch_size]
        rows = [prompts[i] for i in chunk]
        if kind == "decoder":
            ids, mask = pad_left(rows, pad_id)
        else:
            ids, mask = pad_right(rows, pad_id)
        generated = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **settings)
        # decoder-only: drop the prompt; encoder-decoder: drop the decoder start token (BART's is EOS)
        generated = generated[:, ids.shape[1] :] if kind == "decoder" else generated[:, 1:]
        for index, row in zip(chunk, generated.tolist(), strict=True):
            outputs[index] = _strip_padding(row, pad_id, tokenizer.eos_token_id)
        if on_batch is not None:
            on_batch(len(chunk))
    return outputs


def _strip_padding(row: list[int], pad_id: int, eos_id: int) -> list[int]:
    """Cut a generated row after its first EOS (what follows is padding of a finished sequence)."""
    if eos_id in row:
        row = row[: row.index(eos_id) + 1]
    while row and row[-1] == pad_id and pad_id != eos_id:
        row = row[:-1]
    return row
