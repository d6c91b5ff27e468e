"""The head formulations: which backbone head, the loss, a Trainer for it, and predictions as label strings.

Task head -> backbone head and num_labels (peftrun/formulation.py) -> what the loss compares:
    classification  "classification", len(task.label_names): logits (B, C) from the model's sequence summary
                    (BERT / RoBERTa: the first token, [CLS], through the pooler or classification head, as
                    P-tuning v2; with prompt tuning the first position is the first virtual token, as in peft;
                    GPT-2: the last real token; BART: the final EOS); cross-entropy with the gold class.
    candidates      "classification", 1: one logit per (text_a, candidate) row (peftrun/head_data.py); the logits of
                    an example's C rows are a softmax over its candidates, cross-entropy with the gold one:
                    BERT's multiple-choice formulation (COPA, ReCoRD); ReCoRD's C varies, padding gets -inf.
    token           "token", len(task.label_names): logits (B, T, C) per token; cross-entropy over each word's
                    first sub-token (the others are labelled -100).
The backbone head is new (random) on a pretrained encoder, so it trains with every method (apply_method's
train_head). Predictions are what `task.score` reads: a label name; for candidates the candidate's label name
(COPA: choice1 / choice2) or, for tasks that name candidates by entity (ReCoRD, meta["entities"]), its entity
text; for tagging, one tag per word, space-joined (a word cut by truncation is tagged O).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from peftrun.data import IGNORE_INDEX
from peftrun.head_data import HeadCollator, HeadFeatures
from peftrun.tasks.base import Example, Task
from peftrun.train import PeftrunTrainer

OUTSIDE = "O"  # the IOB tag of a word outside every entity
NON_MODEL_KEYS = ("labels", "candidate_counts")


def candidate_scores(logits: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores (B, C_max), valid (B, C_max)) from row logits (R, 1): example b owns the next counts[b] rows."""
    counts = counts.to(logits.device)
    width = int(counts.max())
    valid = torch.arange(width, device=logits.device)[None] < counts[:, None]  # (B, C_max)
    scores = logits.new_full(valid.shape, float("-inf"))
    scores[valid] = logits.reshape(-1)  # row-major order of `valid` = the rows' order
    return scores, valid


def _model_logits(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(**{k: v for k, v in batch.items() if k not in NON_MODEL_KEYS}).logits


def head_logits(model: nn.Module, batch: dict[str, torch.Tensor], head: str) -> torch.Tensor:
    """Classification (B, C), candidates (B, C_max) with -inf padding, token (B, T, C)."""
    logits = _model_logits(model, batch)
    return candidate_scores(logits, batch["candidate_counts"])[0] if head == "candidates" else logits


def head_loss(model: nn.Module, batch: dict[str, torch.Tensor], head: str,
              label_smoothing: float = 0.0) -> tuple[torch.Tensor, int]:
    """(summed cross-entropy over labelled items, number of items); items = examples, or tagged tokens.

    Candidates with label smoothing spread the smoothing mass over each example's real candidates only.
    """
    logits = _model_logits(model, batch).float()
    labels = batch["labels"]
    if head == "candidates":
        scores, valid = candidate_scores(logits, batch["candidate_counts"])
        keep = labels != IGNORE_INDEX
        logp = torch.log_softmax(scores[keep], dim=-1)
        nll = -logp.gather(1, labels[keep][:, None])[:, 0]
        if label_smoothing:
            uniform = -logp.masked_fill(~valid[keep], 0.0).sum(-1) / valid[keep].sum(-1)
            nll = (1 - label_smoothing) * nll + label_smoothing * uniform
        return nll.sum(), int(keep.sum())
    if head == "token":
        logits, labels = logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)
    keep = labels != IGNORE_INDEX
    loss = F.cross_entropy(logits[keep], labels[keep], reduction="sum", label_smoothing=label_smoothing)
    return loss, int(keep.sum())


class HeadTrainer(PeftrunTrainer):
    """PeftrunTrainer (length-grouped sampler, trainable-only checkpoints, loss normalisation) with a head loss."""

    def __init__(self, *args: Any, head: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.head = head

    def summed_loss(self, model: nn.Module, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        return head_loss(model, inputs, self.head, self.label_smoothing)


@torch.inference_mode()
def predict(model: nn.Module, data: HeadFeatures, head: str, pad_token_id: int, batch_size: int,
            on_batch: Callable[[int], None] | None = None) -> list[Any]:
    """Per example, in input order: the argmax class or candidate index (int), or per word the argmax tag id
    of its first sub-token (list[int], -1 for a word cut by truncation).

    Examples are batched longest first (peak memory shows at once, little padding), as peftrun/generate.py.
    """
    model.eval()
    collate = HeadCollator(pad_token_id, head)
    device = next(model.parameters()).device
    order = sorted(range(len(data)), key=lambda i: -data.features[i].length)
    out: list[Any] = [None] * len(data)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        features = [data.features[i] for i in chunk]
        batch = {k: v.to(device) for k, v in collate(features).items()}
        best = head_logits(model, batch, head).argmax(dim=-1).tolist()
        for index, feature, value in zip(chunk, features, best, strict=True):
            if head == "token":
                value = [value[s] if s >= 0 else -1 for s in feature.word_starts]
            out[index] = value
        if on_batch is not None:
            on_batch(len(chunk))
    return out


def label_strings(task: Task, examples: list[Example], predicted: list[Any], head: str) -> list[str]:
    """Predictions in the form `task.score` takes (see module docstring)."""
    names = task.label_names
    if head == "token":
        return [" ".join(names[t] if t >= 0 else OUTSIDE for t in tags) for tags in predicted]
    if head == "candidates":
        return [((ex.meta or {}).get("entities") or names)[i] for ex, i in zip(examples, predicted, strict=True)]
    return [names[i] for i in predicted]
