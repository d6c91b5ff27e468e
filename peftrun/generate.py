"""Batched, length-sorted generation for evaluation.

Prompts are sorted by length (longest first, so the first batch shows peak memory at once) and batched,
so padding per batch is minimal; decoder-only prompts are left-padded so every row's next token sits at
the same position. Outputs come back in the original order.

Greedy search runs in peftrun.decode's lean loops when they give the same tokens as `model.generate`:
decoder-only prompts that fill more than one batch go to the continuous loop (finished rows leave, waiting
prompts are prefilled into the freed slots: continuous_greedy_decode) unless min_length or forced_bos_token_id
is set (both depend on the padded batch width); the rest go batch by batch to greedy_decode (finished rows
leave the batch). Either applies when task.generation.decoder=auto, the effective generation config holds nothing
that the loops lack (peftrun.decode.greedy_kwargs), and no input-side delta (prompt tuning, P-tuning) is attached
(those hook the model's forward and follow how generate calls it). Everything else, and decoder=hf, uses
`model.generate`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from peftrun.data import pad_left, pad_right
from peftrun.decode import continuous_greedy_decode, greedy_decode, greedy_kwargs
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
    continuous = _continuous_kwargs(kind, lean, len(prompts), gen_cfg.batch_size)
    if continuous is not None:
        generated = continuous_greedy_decode(model, [prompts[i] for i in order], gen_cfg.batch_size,
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
            "(auto: the lean greedy loop where it gives generate's tokens; hf: always model.generate)"
        )
    if gen_cfg.decoder == "hf" or _has_input_side_delta(model):
        return None
    return greedy_kwargs(model, settings)


def _continuous_kwargs(kind: str, lean: dict[str, Any] | None, count: int, batch_size: int) -> dict[str, Any] | None:
    """continuous_greedy_decode's arguments (beyond prompts and batch size) when it applies, else None: the lean
    loop applies, decoder-only, more prompts than one batch, and no rule that depends on the padded batch width."""
    if lean is None or kind != "decoder" or count <= batch_size or lean["pad_token_id"] is None:
        return None
    if lean["forced_bos_token_id"] is not None or (lean["min_new_tokens"] is None and lean["min_length"]):
        return None
    keys = ("max_new_tokens", "eos_token_id", "pad_token_id", "min_new_tokens", "suppress_tokens",
            "forced_eos_token_id")
    return {key: lean[key] for key in keys}


def _has_input_side_delta(model: Any) -> bool:
    """True if a soft prompt (prompt tuning, P-tuning) is attached: it rewrites the forward's inputs."""
    from peftrun.methods.applied import DELTAS_ATTR
    from peftrun.methods.soft_prompt import SoftPrompt

    deltas = getattr(model, DELTAS_ATTR, None)
    return deltas is not None and any(isinstance(delta, SoftPrompt) for delta in deltas.values())


def _strip_padding(row: list[int], pad_id: int, eos_id: int) -> list[int]:
    """Cut a generated row after its first EOS (what follows is padding of a finished sequence)."""
    if eos_id in row:
        row = row[: row.index(eos_id) + 1]
    while row and row[-1] == pad_id and pad_id != eos_id:
        row = row[:-1]
    return row
