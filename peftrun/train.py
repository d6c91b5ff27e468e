"""Training with the transformers Trainer: target-only LM-head work, length-grouped dynamic batches.

The loss needs logits only where a label exists. Instead of letting the model project every position
(source and padding included) through the LM head, a forward pre-hook on the head gathers the hidden
states of the predicting positions first, so the head computes `(N_targets, vocab)` instead of
`(batch, seq, vocab)`: for GPT-2 on table-to-text most positions are source tokens.
"""

from __future__ import annotations

import math
import os
import signal
import time
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_pt_utils import LengthGroupedSampler

from peftrun.backbones.anatomy import Anatomy, get_module
from peftrun.data import IGNORE_INDEX
from peftrun.errors import PeftrunError

TRAINABLE_WEIGHTS = "trainable.safetensors"


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trainable parameters by name (contiguous copies, as safetensors wants)."""
    unwrapped = getattr(model, "module", model)
    return {n: p.detach().contiguous() for n, p in unwrapped.named_parameters() if p.requires_grad}


@contextmanager
def gather_head_inputs(head: nn.Module, positions: torch.Tensor):
    """Within the block, `head` sees only hidden[positions] (a bool mask over (batch, seq))."""

    def pre_hook(_module: nn.Module, args: tuple) -> tuple:
        hidden = args[0]
        return (hidden[positions],) + tuple(args[1:])

    handle = head.register_forward_pre_hook(pre_hook)
    try:
        yield
    finally:
        handle.remove()


def target_only_loss(
    model: nn.Module, anatomy: Anatomy, batch: dict[str, torch.Tensor], label_smoothing: float = 0.0
) -> tuple[torch.Tensor, int]:
    """Summed token cross-entropy over label positions, and the number of those positions.

    decoder: position t predicts labels[t + 1]; encoder-decoder: decoder position t predicts labels[t].
    """
    labels = batch["labels"]
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    if anatomy.kind == "decoder":
        targets = labels[:, 1:]
        positions = torch.zeros_like(labels, dtype=torch.bool)
        positions[:, :-1] = targets != IGNORE_INDEX
        gold = targets[targets != IGNORE_INDEX]
    else:
        positions = labels != IGNORE_INDEX
        gold = labels[positions]
    unwrapped = getattr(model, "module", model)  # DistributedDataParallel keeps the model in .module
    with gather_head_inputs(get_module(unwrapped, anatomy.lm_head), positions):
        logits = model(**inputs, use_cache=False).logits  # (N, vocab)
    loss = F.cross_entropy(logits.float(), gold, reduction="sum", label_smoothing=label_smoothing)
    return loss, int(gold.numel())


class PeftrunTrainer(Trainer):
    """Trainer with target-only logits and a length-grouped sampler fed with precomputed lengths."""

    loss_is_scaled_for_ga = True  # compute_loss normalises by the token count of the whole accumulated batch

    def __init__(self, *args: Any, anatomy: Anatomy, label_smoothing: float, lengths: list[int], **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.anatomy = anatomy
        self.label_smoothing = label_smoothing
        self.lengths = lengths
        self.tokens_seen = 0

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Checkpoints hold the trainable tensors only (a LoRA checkpoint is kilobytes, not the backbone)."""
        if not self.args.should_save:
            return
        os.makedirs(output_dir, exist_ok=True)
        save_file(trainable_state(self.model), os.path.join(output_dir, TRAINABLE_WEIGHTS))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        model = model if model is not None else self.model
        path = os.path.join(resume_from_checkpoint, TRAINABLE_WEIGHTS)
        state = load_file(path)
        expected = trainable_state(model)
        if set(state) != set(expected):
            raise PeftrunError(
                f"checkpoint {resume_from_checkpoint} does not match this method's trainable parameters "
                f"({len(state)} vs {len(expected)} tensors); resume with the same method, or start a new run dir"
            )
        unwrapped = getattr(model, "module", model)
        with torch.no_grad():
            params = dict(unwrapped.named_parameters())
            for name, tensor in state.items():
                params[name].copy_(tensor)

    def _get_train_sampler(self, train_dataset=None):
        if self.args.train_sampling_strategy != "group_by_length":
            return super()._get_train_sampler(train_dataset)
        return LengthGroupedSampler(
            self.args.train_batch_size * self.args.gradient_accumulation_steps, lengths=self.lengths
        )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss_sum, count = target_only_loss(model, self.anatomy, inputs, self.label_smoothing)
        self.tokens_seen += int(inputs["attention_mask"].sum())
        if num_items_in_batch is not None:
            loss = loss_sum / num_items_in_batch
            if self.args.average_tokens_across_devices:
                # num_items_in_batch counts every process's tokens while DDP averages gradients over processes
                loss = loss * self.accelerator.num_processes
        else:
            loss = loss_sum / max(count, 1) / self.args.gradient_accumulation_steps
        return (loss, None) if return_outputs else loss


def training_arguments(
    trainer_cfg: Any, output_dir: str, has_train: bool, logger_cfg: Any | None = None, run_dir: str | None = None
) -> TrainingArguments:
    """TrainingArguments from peftrun's TrainerConfig (one place that maps our keys to HF's)."""
    report_to = configure_logger(logger_cfg, run_dir) if logger_cfg is not None else "none"
    precision = trainer_cfg.precision
    warmup: float | int = trainer_cfg.warmup_steps
    if trainer_cfg.warmup_ratio > 0:
        warmup = trainer_cfg.warmup_ratio  # transformers reads a float < 1 as a ratio of total steps
    return TrainingArguments(
        output_dir=output_dir,
        learning_rate=trainer_cfg.lr,
        num_train_epochs=trainer_cfg.epochs,
        max_steps=trainer_cfg.max_steps,
        per_device_train_batch_size=trainer_cfg.batch_size,
        gradient_accumulation_steps=trainer_cfg.grad_accum,
        warmup_steps=warmup,
        weight_decay=trainer_cfg.weight_decay,
        max_grad_norm=trainer_cfg.max_grad_norm,
        lr_scheduler_type=trainer_cfg.scheduler,
        seed=trainer_cfg.seed,
        data_seed=trainer_cfg.seed,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        logging_steps=trainer_cfg.logging_steps,
        save_strategy="steps" if trainer_cfg.save_every > 0 else "no",
        save_steps=max(trainer_cfg.save_every, 1),
        save_total_limit=2,  # the newest for resume + one in case the newest was cut mid-write
        eval_strategy="no",
        report_to=report_to,
        run_name=os.path.basename(run_dir) if run_dir else None,
        disable_tqdm=True,
        remove_unused_columns=False,
        train_sampling_strategy="group_by_length" if trainer_cfg.group_by_length else "random",
        dataloader_num_workers=trainer_cfg.num_workers,
        dataloader_pin_memory=torch.cuda.is_available(),
        use_cpu=not torch.cuda.is_available(),
    )


_USER_ENV = dict(os.environ)  # what the user set before peftrun started: it always wins


def _run_env(name: str, value: str) -> None:
    """Set a per-run variable unless the user set it (sweep jobs share one process: no setdefault)."""
    os.environ[name] = _USER_ENV.get(name, value)


def configure_logger(logger_cfg: Any, run_dir: str | None) -> str:
    """The Trainer's `report_to` for logger.backend, with offline-safe settings for W&B and MLflow."""
    backend = logger_cfg.backend
    if backend == "none":
        return "none"
    if backend == "tensorboard" and run_dir:
        _run_env("TENSORBOARD_LOGGING_DIR", os.path.join(run_dir, "tensorboard"))
    elif backend == "wandb":
        _run_env("WANDB_PROJECT", logger_cfg.project)
        if logger_cfg.offline:
            _run_env("WANDB_MODE", "offline")
        if run_dir:
            _run_env("WANDB_DIR", run_dir)
    elif backend == "mlflow":
        _run_env("MLFLOW_EXPERIMENT_NAME", logger_cfg.project)
        if logger_cfg.offline and run_dir:
            _run_env("MLFLOW_TRACKING_URI", "file:" + os.path.join(os.path.abspath(run_dir), "mlruns"))
    elif backend != "tensorboard":
        raise PeftrunError(f"logger.backend={backend!r} is not one of tensorboard, wandb, mlflow, none")
    module = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}[backend]
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise PeftrunError(f"logger.backend={backend} needs the {module!r} package: pip install {module}, "
                           "or choose logger=none")
    return backend


class ConsoleProgress(TrainerCallback):
    """A rich progress bar with loss, learning rate and ETA; appends every log to train_log.jsonl."""

    def __init__(self, log_path: str, console: Any) -> None:
        self.log_path = log_path
        self.console = console
        self.progress = None
        self.task = None
        self.started = 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
            TimeRemainingColumn(), console=self.console, transient=False,
        )
        self.progress.start()
        self.task = self.progress.add_task("train", total=state.max_steps, info="")
        self.started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.update(self.task, completed=state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        import json

        logs = dict(logs or {})
        trainer = kwargs.get("trainer")
        elapsed = time.perf_counter() - self.started
        entry = {"step": state.global_step, **logs, "elapsed_s": round(elapsed, 3)}
        with open(self.log_path, "a") as handle:
            handle.write(json.dumps(entry) + "\n")
        if self.progress is not None and "loss" in logs:
            lr = logs.get("learning_rate", float("nan"))
            info = f"loss {logs['loss']:.4f}  lr {lr:.2e}"
            if trainer is not None:
                info += f"  {trainer.tokens_seen / max(elapsed, 1e-9):,.0f} tok/s"
            self.progress.update(self.task, info=info)

    def on_train_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.stop()


def total_steps(n_examples: int, trainer_cfg: Any) -> int:
    """Optimizer steps a run will take (for the console and the record)."""
    if trainer_cfg.max_steps > 0:
        return trainer_cfg.max_steps
    per_epoch = math.ceil(n_examples / (trainer_cfg.batch_size * trainer_cfg.grad_accum))
    return math.ceil(per_epoch * trainer_cfg.epochs)


class StopOnSignal(TrainerCallback):
    """SIGTERM (Slurm preemption) or SIGINT: save a checkpoint at the end of the current step, then stop.

    `received` tells the caller the run was interrupted (its record says so and the next run resumes).
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def on_train_begin(self, args, state, control, **kwargs):
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self.received = signum

    def on_step_end(self, args, state, control, **kwargs):
        if self.received is not None:
            control.should_save = True
            control.should_training_stop = True
        return control

    def on_train_end(self, args, state, control, **kwargs):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def last_checkpoint(directory: str) -> str | None:
    """The newest `checkpoint-<step>` folder holding trainable weights, or None."""
    if not os.path.isdir(directory):
        return None
    steps = []
    for name in os.listdir(directory):
        complete = os.path.exists(os.path.join(directory, name, "trainer_state.json"))  # written last
        if name.startswith("checkpoint-") and name.split("-")[-1].isdigit() and complete:
            steps.append(int(name.split("-")[-1]))
    return os.path.join(directory, f"checkpoint-{max(steps)}") if steps else None
