"""Token ids and batches for the head formulations (encoders: BERT, RoBERTa; any family with the head).

Each example becomes a `HeadFeature` (see Example.meta in peftrun/tasks/base.py for what the tasks provide):
- classification: one row, tokenizer(text_a, text_b) (BERT: "[CLS] a [SEP] b [SEP]" with token_type_ids 0 / 1),
  label = meta["label"];
- candidates (COPA, ReCoRD): one row per candidate, tokenizer(text_a, candidate), label = the gold candidate's
  index (-1 when no candidate is gold: such examples are evaluated, never trained on);
- token (CoNLL): one row, the words joined by single spaces; each word's label sits on its first sub-token, every
  other position is -100 (ignored), as in BERT's NER recipe. Sub-tokens are mapped to words by character
  offsets, so any fast tokenizer (WordPiece, byte-level BPE) gets its natural segmentation of the sentence.
Rows are cut to task.max_source_length tokens (special tokens kept; for pairs the longer text loses tokens
first); cut rows are counted. Tokenisation is cached on disk like peftrun/data.py's (peftrun/token_cache.py).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import torch

from peftrun.data import IGNORE_INDEX, pad_right, tokenizer_fingerprint
from peftrun.errors import PeftrunError
from peftrun.tasks.base import Example
from peftrun.token_cache import cache_path, load_cached, save_lists

HEADS = ("classification", "candidates", "token")
CACHE_VERSION = 1


@dataclass
class HeadFeature:
    """One example's rows.

    input_ids / token_type_ids: (rows, tokens) lists, rows = 1 except for candidates; token_type_ids empty when
        the tokenizer has no segments.
    label: gold class or candidate index (-1: none); token head: -1 (labels are per token).
    token_labels: token head only: per token of the row, the word's tag id on its first sub-token, else -100.
    word_starts: token head only: per word, the index of its first sub-token in the row, -1 if the word was cut.
    """

    input_ids: list[list[int]]
    token_type_ids: list[list[int]] = field(default_factory=list)
    label: int = -1
    token_labels: list[int] = field(default_factory=list)
    word_starts: list[int] = field(default_factory=list)

    @property
    def length(self) -> int:
        """Tokens over all rows (for the length-grouped sampler)."""
        return sum(len(row) for row in self.input_ids)


@dataclass
class HeadFeatures:
    features: list[HeadFeature]
    truncated: int  # examples with at least one cut row

    def __len__(self) -> int:
        return len(self.features)


def encode_head_examples(examples: list[Example], tokenizer: Any, head: str, max_length: int,
                         cache_dir: str | None = None) -> HeadFeatures:
    """`HeadFeatures` for `examples` in the layout of `head` (see module docstring), cached on disk."""
    if head not in HEADS:
        raise ValueError(f"unknown head {head!r}; known: {', '.join(HEADS)}")
    if not getattr(tokenizer, "is_fast", False):
        raise PeftrunError(f"the {head} head needs a fast tokenizer (offsets, pair truncation); "
                           f"{type(tokenizer).__name__} is not one: set backbone.tokenizer to a fast tokenizer")
    digest = hashlib.sha256()
    for ex in examples:
        meta = ex.meta or {}
        digest.update(json.dumps([meta.get(k) for k in ("text_a", "text_b", "candidates", "tokens", "tag_ids",
                                                        "label")]).encode())
    key = hashlib.sha256(json.dumps([tokenizer_fingerprint(tokenizer), head, max_length, digest.hexdigest(),
                                     CACHE_VERSION]).encode()).hexdigest()[:24]
    path = cache_path(cache_dir, f"head-{key}")
    cached = load_cached(path, CACHE_FIELDS, _decode_cached)
    if cached is not None and len(cached) == len(examples):
        return cached
    if head == "token":
        result = _encode_tokens(examples, tokenizer, max_length)
    else:
        result = _encode_pairs(examples, tokenizer, head, max_length)
    if path is not None:
        save_lists(path, _encode_cached(result.features), {"truncated": result.truncated})
    return result


CACHE_FIELDS = ("rows", "input_ids", "token_type_ids", "label", "token_labels", "word_starts")


def _encode_cached(features: list[HeadFeature]) -> dict[str, list[list[int]]]:
    """Ragged int lists for token_cache: per feature its row counts and label, the rows flattened over features."""
    return {
        "rows": [[len(f.input_ids), len(f.token_type_ids)] for f in features],
        "input_ids": [row for f in features for row in f.input_ids],
        "token_type_ids": [row for f in features for row in f.token_type_ids],
        "label": [[f.label] for f in features],
        "token_labels": [f.token_labels for f in features],
        "word_starts": [f.word_starts for f in features],
    }


def _decode_cached(fields: dict[str, list[list[int]]], meta: dict[str, Any]) -> HeadFeatures:
    features, ids, types = [], iter(fields["input_ids"]), iter(fields["token_type_ids"])
    n = len(fields["rows"])
    if any(len(fields[name]) != n for name in ("label", "token_labels", "word_starts")):
        raise ValueError("per-feature fields have different counts")
    for (n_rows, n_types), (label,), token_labels, starts in zip(
            fields["rows"], fields["label"], fields["token_labels"], fields["word_starts"], strict=True):
        rows = [next(ids) for _ in range(n_rows)]
        features.append(HeadFeature(rows, [next(types) for _ in range(n_types)], label, token_labels, starts))
    if next(ids, None) is not None or next(types, None) is not None:
        raise ValueError("more rows than the features hold")
    return HeadFeatures(features, int(meta["truncated"]))


def _meta(example: Example, key: str) -> Any:
    meta = example.meta or {}
    if key not in meta:
        raise PeftrunError(f"example {example.id!r} has no meta[{key!r}]: its task does not provide the head "
                           "formulation's inputs; use task.formulation=text")
    return meta[key]


def _encode_pairs(examples: list[Example], tokenizer: Any, head: str, max_length: int) -> HeadFeatures:
    """Classification (one pair per example) and candidates (one pair per candidate)."""
    firsts: list[str] = []
    seconds: list[str | None] = []
    owners: list[int] = []
    labels: list[int] = []
    for index, ex in enumerate(examples):
        text_a = str(_meta(ex, "text_a"))
        if head == "candidates":
            candidates = [str(c) for c in _meta(ex, "candidates")]
            if not candidates:
                raise PeftrunError(f"example {ex.id!r} has no candidates to score")
        else:
            text_b = (ex.meta or {}).get("text_b")
            candidates = [None if text_b is None else str(text_b)]
        firsts += [text_a] * len(candidates)
        seconds += candidates
        owners += [index] * len(candidates)
        labels.append(int(_meta(ex, "label")))
    features = [HeadFeature(input_ids=[], label=label) for label in labels]
    cut = [False] * len(examples)
    if any(s is None for s in seconds) and not all(s is None for s in seconds):
        raise PeftrunError("some examples have meta['text_b'] and others not; a task gives pairs or single texts")
    pairs = None if all(s is None for s in seconds) else seconds
    encoded = tokenizer(firsts, pairs, truncation=True, max_length=max_length)
    has_types = "token_type_ids" in encoded
    for row, owner in enumerate(owners):
        features[owner].input_ids.append(encoded["input_ids"][row])
        if has_types:
            features[owner].token_type_ids.append(encoded["token_type_ids"][row])
        cut[owner] = cut[owner] or bool(encoded.encodings[row].overflowing)
    return HeadFeatures(features, sum(cut))


def word_spans(words: list[str]) -> tuple[str, list[int]]:
    """The sentence (words joined by single spaces) and, per character, its word's index (-1 for the spaces)."""
    owner: list[int] = []
    for index, word in enumerate(words):
        if index:
            owner.append(-1)
        owner += [index] * len(word)
    return " ".join(words), owner


def align_token_labels(offsets: list[tuple[int, int]], char_word: list[int], n_words: int,
                       tag_ids: list[int] | None) -> tuple[list[int], list[int]]:
    """(per-token labels, per-word first-token index) from a row's character offsets.

    A token belongs to the word of its first non-space character; special tokens ((0, 0) offsets) and tokens
    made of spaces belong to none. The first token of each word carries its tag id (-100 without tag_ids), every
    other token -100; a word with no token (cut by truncation) has start -1.
    """
    labels: list[int] = []
    starts = [-1] * n_words
    for position, (begin, end) in enumerate(offsets):
        word = next((char_word[c] for c in range(begin, min(end, len(char_word))) if char_word[c] >= 0), -1)
        if word >= 0 and starts[word] < 0:
            starts[word] = position
            labels.append(tag_ids[word] if tag_ids is not None else IGNORE_INDEX)
        else:
            labels.append(IGNORE_INDEX)
    return labels, starts


def _encode_tokens(examples: list[Example], tokenizer: Any, max_length: int) -> HeadFeatures:
    sentences, owners = [], []
    for ex in examples:
        sentence, owner = word_spans([str(w) for w in _meta(ex, "tokens")])
        sentences.append(sentence)
        owners.append(owner)
    encoded = tokenizer(sentences, truncation=True, max_length=max_length, return_offsets_mapping=True)
    features, truncated = [], 0
    for row, ex in enumerate(examples):
        words = _meta(ex, "tokens")
        tag_ids = [int(t) for t in _meta(ex, "tag_ids")]
        labels, starts = align_token_labels(encoded["offset_mapping"][row], owners[row], len(words), tag_ids)
        types = [encoded["token_type_ids"][row]] if "token_type_ids" in encoded else []
        features.append(HeadFeature([encoded["input_ids"][row]], types, -1, labels, starts))
        truncated += int(min(starts, default=0) < 0)
    return HeadFeatures(features, truncated)


class HeadDataset(torch.utils.data.Dataset):
    """Training features; examples without a gold label (candidates: no gold candidate) are left out."""

    def __init__(self, data: HeadFeatures, head: str) -> None:
        self.features = [f for f in data.features if head == "token" or f.label >= 0]
        self.lengths = [f.length for f in self.features]

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, index: int) -> HeadFeature:
        return self.features[index]


@dataclass
class HeadCollator:
    """Pads a batch of HeadFeatures to its longest row (right padding; padding has attention 0, label -100).

    Output: input_ids / attention_mask (/ token_type_ids) of shape (R, T), R = rows of the batch (the batch size,
    or the total number of candidates); labels: (B,) class or gold-candidate index, or (B, T) token labels;
    candidates only: candidate_counts (B,), the rows of each example in order.
    """

    pad_token_id: int
    head: str

    def __call__(self, features: list[HeadFeature]) -> dict[str, torch.Tensor]:
        rows = [row for f in features for row in f.input_ids]
        input_ids, attention_mask = pad_right(rows, self.pad_token_id)
        batch = {"input_ids": input_ids, "attention_mask": attention_mask}
        if features[0].token_type_ids:
            batch["token_type_ids"] = pad_right([row for f in features for row in f.token_type_ids], 0)[0]
        if self.head == "token":
            batch["labels"] = pad_right([f.token_labels for f in features], IGNORE_INDEX)[0]
        else:
            batch["labels"] = torch.tensor([f.label if f.label >= 0 else IGNORE_INDEX for f in features])
        if self.head == "candidates":
            batch["candidate_counts"] = torch.tensor([len(f.input_ids) for f in features])
        return batch
