"""Token ids of a prompt and of an answer, in one of two layouts.

- trained (no prompt config, or a run that trains): the layout of peftrun/data.py, so a tuned model is scored
  as it was trained: decoder prompt = tokens(text)[:max_source_length - 1] + [EOS], answer = tokens(answer) + [EOS];
  encoder-decoder: tokenizer(text) / tokenizer(text_target=answer) with their special tokens.
- natural (prompting a frozen model: a method that trains nothing, method=icl, with or without a prompt config;
  `reads_natural_layout`): what a pretrained LM reads. Decoder:
  tokenizer(prompt + answer_separator without its trailing spaces) with the tokenizer's own specials (BOS), and the
  answer tokenised with a leading space when the separator ends with one (BPE words carry their space); no EOS.
  Encoder-decoder: as trained.
"""

from __future__ import annotations

from typing import Any

NATURAL_STOP = "\n\n"  # where a frozen model's answer ends when no prompt config names an example separator


def reads_natural_layout(cfg: Any) -> bool:
    """A method that trains nothing (method=icl: no deltas, frozen backbone) prompts a frozen model, which never
    saw the trained layout's EOS between prompt and answer; every other run reads the layout it was trained in."""
    return cfg.method.train == "none" and not cfg.method.deltas


def prompt_ids(tokenizer: Any, kind: str, text: str, natural: bool, separator: str = " ",
               max_length: int | None = None) -> list[int]:
    """The context ids; `max_length` cuts like peftrun/data.py (None: no cut)."""
    if kind == "decoder":
        if natural:
            ids = tokenizer(text + separator.rstrip(" "))["input_ids"]
            return ids if max_length is None else ids[:max_length]
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if max_length is not None:
            ids = ids[: max_length - 1]
        return ids + [tokenizer.eos_token_id]
    ids = tokenizer(text)["input_ids"]
    if max_length is not None and len(ids) > max_length:
        ids = ids[: max_length - 1] + [ids[-1]]
    return ids


def answer_ids(tokenizer: Any, kind: str, text: str, natural: bool, separator: str = " ",
               max_length: int | None = None) -> list[int]:
    """The ids of an answer after its prompt (the tokens rank classification scores)."""
    if kind == "decoder":
        if natural:
            lead = " " if separator.endswith(" ") else ""
            return tokenizer(lead + text, add_special_tokens=False)["input_ids"]
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if max_length is not None:
            ids = ids[: max_length - 1]
        return ids + [tokenizer.eos_token_id]
    ids = tokenizer(text_target=text)["input_ids"]
    if max_length is not None and len(ids) > max_length:
        ids = ids[: max_length - 1] + [ids[-1]]
    return ids


def natural_answer(text: str, example_separator: str) -> str:
    """The answer a frozen LM gave in the natural layout: its text up to the example separator. Nothing tells the
    model to stop after one answer (no EOS was ever trained after one), so after it answers, a model shown
    demonstrations goes on writing the next one ("\n\nAttributes: ..."); in-context learning evaluations
    (GPT-3, OpenICL) stop at the separator, and so does this."""
    stop = example_separator.strip(" ")  # a separator of spaces only cannot be told from the answer's own
    cut = text.find(stop) if stop else -1
    return (text if cut < 0 else text[:cut]).strip()

