"""One classification head per task, as column blocks of one classifier (task=mixture on an encoder).

The backbone's classifier has sum_i C_i outputs; task i owns columns [offset_i, offset_i + C_i)
(peftrun/tasks/mixture.py). Restricting the softmax to an example's own block makes the blocks independent
linear heads over the shared encoder (a row of the weight matrix, and its bias, gets gradient only from its own
task's examples), i.e. exactly one head per task, saved and loaded with the method like any head:
    loss_b = -log softmax(logits_b[block(b)])[label_b - offset(b)]
with block(b) read off the gold (global) label. Predictions take the argmax within the evaluated task's block.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from peftrun.data import IGNORE_INDEX
from peftrun.heads import HeadTrainer, _model_logits


def column_tasks(task: Any) -> torch.Tensor:
    """(C_total,) the member index that owns each classifier column."""
    owner = torch.empty(len(task.label_names), dtype=torch.long)
    for index, name in enumerate(task.members):
        owner[list(task.label_columns(name))] = index
    return owner


def multitask_head_loss(logits: torch.Tensor, labels: torch.Tensor, owner: torch.Tensor,
                        label_smoothing: float = 0.0) -> tuple[torch.Tensor, int]:
    """(summed cross-entropy within each example's block, labelled examples); logits (B, C_total)."""
    keep = labels != IGNORE_INDEX
    logits, labels = logits[keep].float(), labels[keep]
    owner = owner.to(logits.device)
    block = owner[None, :] == owner[labels][:, None]  # (B, C_total)
    logp = torch.log_softmax(logits.masked_fill(~block, float("-inf")), dim=-1)
    nll = -logp.gather(1, labels[:, None])[:, 0]
    if label_smoothing:
        uniform = -logp.masked_fill(~block, 0.0).sum(-1) / block.sum(-1)
        nll = (1 - label_smoothing) * nll + label_smoothing * uniform
    return nll.sum(), int(keep.sum())


class MultiTaskHeadTrainer(HeadTrainer):
    """HeadTrainer whose loss keeps each example inside its task's head (module docstring)."""

    def __init__(self, *args: Any, owner: torch.Tensor, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.owner = owner

    def summed_loss(self, model: nn.Module, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        return multitask_head_loss(_model_logits(model, inputs), inputs["labels"], self.owner, self.label_smoothing)


@contextmanager
def restrict_to_member(model: nn.Module, task: Any, split: str, formulation: str) -> Iterator[None]:
    """While evaluating a mixture split on its classification head, logits outside that member's columns are -inf
    (no-op for single tasks and other formulations)."""
    if getattr(task, "name", "") != "mixture" or not task.multitask_head or formulation != "classification":
        yield
        return
    name, _ = task.member_of(split)
    columns = torch.zeros(len(task.label_names), dtype=torch.bool)
    columns[list(task.label_columns(name))] = True

    def hook(_module: nn.Module, _args: tuple, output: Any) -> Any:
        output.logits = output.logits.masked_fill(~columns.to(output.logits.device), float("-inf"))
        return output

    handle = model.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()
