"""trainer.precision: fp32, or mixed precision with float32 master weights (bf16 on CPU or GPU, fp16 on GPU).

Training: the transformers Trainer's mixed precision (TrainingArguments bf16 / fp16 -> accelerate autocasts the
forward; on CPU bf16 is torch.autocast("cpu", torch.bfloat16)). The weights stay in the dtype they were loaded
in (backbone.dtype, float32 by default), so the optimizer updates float32 trainable parameters; matmuls run in
bfloat16 where autocast says so, and the loss is computed in float32 (train.py casts the logits).
Evaluation runs under the same autocast (`eval_autocast`), generation included.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any

from peftrun.errors import PeftrunError

PRECISIONS = ("fp32", "bf16", "fp16")


def check_precision(precision: str, cuda: bool | None = None) -> None:
    """Refuse an unknown precision, and fp16 without a GPU (CPU autocast has no fp16 loss scaling), at start-up."""
    if precision not in PRECISIONS:
        raise PeftrunError(f"trainer.precision={precision!r}; allowed: {', '.join(PRECISIONS)}")
    if precision == "fp16":
        if cuda is None:
            import torch

            cuda = torch.cuda.is_available()
        if not cuda:
            raise PeftrunError("trainer.precision=fp16 needs a GPU; on CPU use trainer.precision=bf16 (or fp32)")


def eval_autocast(precision: str, device: Any) -> AbstractContextManager:
    """The autocast context evaluation runs in: the training precision on the model's device (none for fp32)."""
    if precision == "fp32":
        return nullcontext()
    import torch

    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)
