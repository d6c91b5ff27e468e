"""Tokenised datasets (cached on disk) and the dynamic-padding collator.

Layouts, by backbone kind:
- decoder (GPT-2): input = source + [EOS] + target + [EOS]; labels are -100 on the source and the separator,
  so the loss (and the LM-head work, see train.py) covers target tokens only. Generation prompts are
  source + [EOS].
- encoder-decoder (BART, T5): input = tokenizer(source), labels = tokenizer(target); decoder inputs are the
  labels shifted right with the model's decoder_start_token_id, built in the collator.

Tokenisation runs once per (tokenizer, task data, lengths): the result is stored under
`<cache_dir>/tokenized/<key>.safetensors` (peftrun/token_cache.py: no pickle) and reused by later runs and
sweep jobs; an unusable entry is rebuilt with a warning naming it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import torch

from peftrun.tasks.base import Example
from peftrun.token_cache import cache_path, load_cached, save_lists

IGNORE_INDEX = -100


@dataclass
class Tokenized:
    """Token ids per example plus truncation counts (reported in the run record)."""

    input_ids: list[list[int]]
    labels: list[list[int]]
    truncated_sources: int
    truncated_targets: int

    def __len__(self) -> int:
        return len(self.input_ids)


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A hash of the tokenizer's full definition (vocab, merges, specials, post-processor)."""
    backend = getattr(tokenizer, "backend_tokenizer", None) or getattr(tokenizer, "_tokenizer", None)
    text = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    specials = json.dumps({k: str(v) for k, v in tokenizer.special_tokens_map.items()}, sort_keys=True)
    return hashlib.sha256((text + specials).encode()).hexdigest()[:16]


def _examples_fingerprint(examples: list[Example], with_target: bool) -> str:
    digest = hashlib.sha256()
    for ex in examples:
        digest.update(ex.source.encode())
        digest.update(b"\x00")
        if with_target:
            digest.update(ex.target.encode())
        digest.update(b"\x01")
    return digest.hexdigest()[:16]


def tokenize_examples(
    examples: list[Example],
    tokenizer: Any,
    kind: str,
    max_source_length: int,
    max_target_length: int,
    cache_dir: str | None = None,
    with_target: bool = True,
) -> Tokenized:
    """Token ids for `examples` in the layout of `kind` ("decoder" | "encoder-decoder"), cached on disk.

    with_target=False gives generation prompts (decoder: source + [EOS]; encoder-decoder: the encoder input).
    """
    key = hashlib.sha256(
        json.dumps(
            [tokenizer_fingerprint(tokenizer), kind, max_source_length, max_target_length, with_target,
             _examples_fingerprint(examples, with_target), 1],
        ).encode()
    ).hexdigest()[:24]
    path = cache_path(cache_dir, key)
    cached = load_cached(path, ("input_ids", "labels"), _decode_cached)
    if cached is not None and len(cached) == len(examples):
        return cached
    result = _tokenize(examples, tokenizer, kind, max_source_length, max_target_length, with_target)
    if path is not None:
        save_lists(path, {"input_ids": result.input_ids, "labels": result.labels},
                   {"truncated_sources": result.truncated_sources, "truncated_targets": result.truncated_targets})
    return result


def _decode_cached(fields: dict[str, list[list[int]]], meta: dict[str, Any]) -> Tokenized:
    if len(fields["input_ids"]) != len(fields["labels"]):
        raise ValueError("input_ids and labels have different row counts")
    return Tokenized(fields["input_ids"], fields["labels"], int(meta["truncated_sources"]),
                     int(meta["truncated_targets"]))


def _tokenize(
    examples: list[Example], tokenizer: Any, kind: str, max_src: int, max_tgt: int, with_target: bool
) -> Tokenized:
    sources = [ex.source for ex in examples]
    targets = [ex.target for ex in examples]
    truncated_src = truncated_tgt = 0
    input_ids: list[list[int]] = []
    labels: list[list[int]] = []
    if kind == "decoder":
        eos = tokenizer.eos_token_id
        src_ids = tokenizer(sources, add_special_tokens=False)["input_ids"]
        tgt_ids = tokenizer(targets, add_special_tokens=False)["input_ids"] if with_target else [[]] * len(sources)
        for src, tgt in zip(src_ids, tgt_ids, strict=True):
            if len(src) > max_src - 1:
                truncated_src += 1
                src = src[: max_src - 1]
            prompt = src + [eos]
            if not with_target:
                input_ids.append(prompt)
                labels.append([])
                continue
            if len(tgt) > max_tgt - 1:
                truncated_tgt += 1
                tgt = tgt[: max_tgt - 1]
            answer = tgt + [eos]
            input_ids.append(prompt + answer)
            labels.append([IGNORE_INDEX] * len(prompt) + answer)
    elif kind == "encoder-decoder":
        full_src = tokenizer(sources)["input_ids"]
        for ids in full_src:
            if len(ids) > max_src:
                truncated_src += 1
                ids = ids[: max_src - 1] + [ids[-1]]  # keep the closing special token
            input_ids.append(ids)
        if with_target:
            for ids in tokenizer(text_target=targets)["input_ids"]:
                if len(ids) > max_tgt:
                    truncated_tgt += 1
                    ids = ids[: max_tgt - 1] + [ids[-1]]
                labels.append(ids)
        else:
            labels = [[] for _ in input_ids]
    else:
        raise ValueError(f"no token layout for backbone kind {kind!r}")
    return Tokenized(input_ids, labels, truncated_src, truncated_tgt)


class TokenizedDataset(torch.utils.data.Dataset):
    """Training examples as dicts of id lists; `lengths` feeds the length-grouped sampler."""

    def __init__(self, data: Tokenized, kind: str) -> None:
        self.data = data
        if kind == "decoder":  # labels align with input_ids
            self.lengths = [len(ids) for ids in data.input_ids]
        else:
            self.lengths = [len(ids) + len(lab) for ids, lab in zip(data.input_ids, data.labels, strict=True)]

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        return {"input_ids": self.data.input_ids[index], "labels": self.data.labels[index]}


@dataclass
class PaddingCollator:
    """Pads each batch to its own longest row (right padding for training).

    Padding never trains: its attention mask is 0 and its labels are -100. For encoder-decoder models the
    decoder inputs are the labels shifted right, starting with `decoder_start_token_id`.
    """

    pad_token_id: int
    kind: str
    decoder_start_token_id: int | None = None

    def __call__(self, rows: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        input_ids = _pad([r["input_ids"] for r in rows], self.pad_token_id)
        batch = {"input_ids": input_ids, "attention_mask": _pad([[1] * len(r["input_ids"]) for r in rows], 0)}
        labels = _pad([r["labels"] for r in rows], IGNORE_INDEX)
        batch["labels"] = labels
        if self.kind == "encoder-decoder":
            start = torch.full((labels.shape[0], 1), self.decoder_start_token_id, dtype=torch.long)
            shifted = torch.cat([start, labels[:, :-1]], dim=1)
            # Trailing pads sit after every real position, so the causal decoder never attends to them.
            batch["decoder_input_ids"] = shifted.masked_fill(shifted == IGNORE_INDEX, self.pad_token_id)
        return batch


def _pad(rows: list[list[int]], value: int, left: bool = False) -> torch.Tensor:
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            if left:
                out[i, width - len(row):] = torch.tensor(row)
            else:
                out[i, : len(row)] = torch.tensor(row)
    return out


def pad_left(rows: list[list[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ids and attention mask (decoder-only generation)."""
    ids = _pad(rows, pad_token_id, left=True)
    mask = _pad([[1] * len(r) for r in rows], 0, left=True)
    return ids, mask


def pad_right(rows: list[list[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and attention mask (encoder inputs)."""
    return _pad(rows, pad_token_id), _pad([[1] * len(r) for r in rows], 0)
