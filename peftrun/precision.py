"""trainer.precision: fp32, or mixed precision with float32 master weights (bf16 on CPU or GPU, fp16 on GPU),
or auto (the default): bf16 where it was measured faster at equal quality, else fp32 (`choose_precision`).

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

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
BF16_MIN_HIDDEN = 512  # residual width from which CPU bf16 pays (hidden 64: no gain; 576, 768: ~2x per step)
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # bfloat16 matmul instructions (oneDNN uses them under autocast)


def cpu_has_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU multiplies bfloat16 natively (without it, CPU autocast emulates and is slower)."""
    try:
        with open(cpuinfo, encoding="ascii", errors="replace") as handle:
            flags = next((line for line in handle if line.startswith("flags")), "").split()
    except OSError:
        return False
    return any(flag in flags for flag in CPU_BF16_FLAGS)


def choose_precision(requested: str, hidden: int | None, cuda: bool, cuda_bf16: bool = False,
                     cpu_bf16: bool | None = None) -> dict[str, str]:
    """{"precision", "requested", "reason"}: `auto` becomes bf16 on a GPU that supports it, and on a CPU with
    bfloat16 instructions for models of width >= BF16_MIN_HIDDEN; otherwise fp32. Measured on this project's
    CPU (docs/RESULTS.md, docs/ARCHITECTURE.md "Benchmarks"): SmolLM2-135M LoRA on E2E, the same train loss to 3
    decimals under bf16 autocast and 96 s vs 187 s of training (two runs at different times, not side by side);
    GPT-2 (124M) steps 2.1x faster in-process; tiny models gain nothing."""
    if requested != "auto":
        return {"precision": requested, "requested": requested, "reason": "trainer.precision"}
    if cuda:
        choice = "bf16" if cuda_bf16 else "fp32"
        return {"precision": choice, "requested": "auto",
                "reason": "GPU with bfloat16" if cuda_bf16 else "GPU without bfloat16"}
    if hidden is None or hidden < BF16_MIN_HIDDEN:
        return {"precision": "fp32", "requested": "auto", "reason": f"hidden {hidden} < {BF16_MIN_HIDDEN}"}
    if not (cpu_has_bf16() if cpu_bf16 is None else cpu_bf16):
        return {"precision": "fp32", "requested": "auto", "reason": "CPU without bfloat16 instructions"}
    return {"precision": "bf16", "requested": "auto", "reason": f"CPU with bfloat16, hidden {hidden}"}


def resolve_precision(trainer_cfg: Any, model: Any, family: Any) -> dict[str, str]:
    """Choose the precision for this model (choose_precision) and write it into `trainer_cfg.precision`, so the
    Trainer and evaluation use it; returns the choice for the run record."""
    import torch

    try:
        hidden = family.shape(model.config).hidden
    except (AttributeError, TypeError):
        hidden = None
    cuda = torch.cuda.is_available()
    choice = choose_precision(trainer_cfg.precision, hidden, cuda, cuda and torch.cuda.is_bf16_supported())
    trainer_cfg.precision = choice["precision"]
    return choice


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
