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


@torch.inference_mode()
def generate_texts(
    model: Any,
    tokenizer: Any,
    kind: str,
    prompts: list[list[int]],
    gen_cfg: Any,
    on_batch: Callable[[int], None] | None = None,
) -> list[str]:
    """Decoded continuations of `prompts` (token ids in the layout of peftrun.data), in input order."""
    model.eval()
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    outputs: list[str] = [""] * len(prompts)
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
    }
    for start in range(0, len(order), gen_cfg.batch_size):
        chunk = order[start : start + gen_cfg.batch_size]
        rows = [prompts[i] for i in chunk]
        if kind == "decoder":
            ids, mask = pad_left(rows, pad_id)
        else:
            ids, mask = pad_right(rows, pad_id)
        generated = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **settings)
        if kind == "decoder":
            generated = generated[:, ids.shape[1] :]
        texts = tokenizer.batch_decode(generated, skip_special_tokens=True)
        for index, text in zip(chunk, texts, strict=True):
            outputs[index] = text.strip()
        if on_batch is not None:
            on_batch(len(chunk))
    return outputs
