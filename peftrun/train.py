"""Training with the transformers Trainer: target-only LM-head work, length-grouped dynamic batches.

The loss needs logits only where a label exists. Instead of letting the model project every position
(source and padding included) through the LM head, a forward pre-hook on the head gathers the hidden
states of the predicting positions first, so the head computes `(N_targets, vocab)` instead of
`(batch, seq, vocab)`: for GPT-2 on table-to-text most positions are source tokens.
"""

from __future__ import annotations

import json
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
from torch.utils.data import Sampler
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_pt_utils import LengthGroupedSampler
from transformers.training_args import OptimizerNames

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


class SeededLengthGroupedSampler(LengthGroupedSampler):
    """Length-grouped order that depends only on (seed, epoch, global batch), never on the global RNG.

    - Megabatches are built for the *global* batch (per-device batch x grad_accum x processes). Accelerate hands
      consecutive per-device batches to consecutive ranks, so N processes with batch b train on exactly the
      examples of one process with batch N*b, step for step.
    - The permutation of epoch e comes from a generator seeded with seed + e (`set_epoch`, called from the
      trainer state by `SamplerEpoch`), so a resumed run, which skips the batches its checkpoint already
      consumed, sees the same order as an uninterrupted one in every epoch, and every rank draws the same order.
    """

    def __init__(self, global_batch_size: int, lengths: list[int], seed: int) -> None:
        super().__init__(global_batch_size, lengths=lengths)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        self.generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return super().__iter__()


class SeededRandomSampler(Sampler):
    """A uniform permutation per epoch from a generator seeded with seed + epoch (see SeededLengthGroupedSampler).

    Used instead of RandomSampler, which accelerate swaps for its own seedable sampler whose epoch a resumed
    DDP run never sets (accelerate's skip-batches wrapper hides it from `set_epoch`).
    """

    def __init__(self, size: int, seed: int) -> None:
        self.size = size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.size, generator=generator).tolist())


class SamplerEpoch(TrainerCallback):
    """Tell the training sampler its epoch from the trainer state at every epoch start.

    The Trainer's own `set_epoch` goes through accelerate's dataloader wrappers, and after a resume under DDP
    (batches skipped) it does not reach the sampler; the state's epoch (restored from the checkpoint) always is.
    """

    def __init__(self, sampler: Any) -> None:
        self.sampler = sampler

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.sampler.set_epoch(math.floor(state.epoch or 0))


class PeftrunTrainer(Trainer):
    """Trainer with target-only logits and a length-grouped sampler fed with precomputed lengths."""

    loss_is_scaled_for_ga = True  # compute_loss normalises by the token count of the whole accumulated batch

    def __init__(self, *args: Any, anatomy: Anatomy, label_smoothing: float, lengths: list[int], **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.anatomy = anatomy
        self.label_smoothing = label_smoothing
        self.lengths = lengths

    @property
    def tokens_seen(self) -> int:
        """Non-padding input tokens trained on, over all processes and resumed sessions (kept in trainer_state)."""
        return int(self.state.num_input_tokens_seen)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Checkpoints hold the trainable tensors only (a LoRA checkpoint is kilobytes, not the backbone)."""
        if not self.args.should_save:
            return
        os.makedirs(output_dir, exist_ok=True)
        save_file(trainable_state(self.model), os.path.join(output_dir, TRAINABLE_WEIGHTS))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        load_trainable(model if model is not None else self.model, resume_from_checkpoint)

    def _get_train_sampler(self, train_dataset=None):
        """The epoch's order is a function of (seed, epoch): resumable anywhere, the same on every rank."""
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if self.args.train_sampling_strategy == "group_by_length":
            global_batch = self.args.train_batch_size * self.args.gradient_accumulation_steps * self.args.world_size
            sampler = SeededLengthGroupedSampler(global_batch, self.lengths, self.args.data_seed)
        elif self.args.train_sampling_strategy == "random":
            sampler = SeededRandomSampler(len(dataset), self.args.data_seed)
        else:
            return super()._get_train_sampler(train_dataset)
        self.remove_callback(SamplerEpoch)
        self.add_callback(SamplerEpoch(sampler))
        return sampler

    def summed_loss(self, model: nn.Module, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        """(loss summed over the micro-batch's items, item count): target tokens here; subclasses with another
        head (peftrun/heads.py) override this and keep compute_loss's normalisation."""
        return target_only_loss(model, self.anatomy, inputs, self.label_smoothing)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss_sum, count = self.summed_loss(model, inputs)
        if num_items_in_batch is not None:
            loss = loss_sum / num_items_in_batch
            if self.args.average_tokens_across_devices:
                # num_items_in_batch counts every process's tokens while DDP averages gradients over processes
                loss = loss * self.accelerator.num_processes
        else:
            loss = loss_sum / max(count, 1) / self.args.gradient_accumulation_steps
        return (loss, None) if return_outputs else loss


def load_trainable(model: nn.Module, checkpoint: str) -> None:
    """Copy a checkpoint's trainable tensors into `model` (the same method's parameters, by name)."""
    state = load_file(os.path.join(checkpoint, TRAINABLE_WEIGHTS))
    expected = trainable_state(model)
    if set(state) != set(expected):
        raise PeftrunError(
            f"checkpoint {checkpoint} does not match this method's trainable parameters "
            f"({len(state)} vs {len(expected)} tensors); resume with the same method, or start a new run dir"
        )
    unwrapped = getattr(model, "module", model)
    with torch.no_grad():
        params = dict(unwrapped.named_parameters())
        for name, tensor in state.items():
            params[name].copy_(tensor)


def training_arguments(
    trainer_cfg: Any, output_dir: str, has_train: bool, logger_cfg: Any | None = None, run_dir: str | None = None
) -> TrainingArguments:
    """TrainingArguments from peftrun's TrainerConfig (one place that maps our keys to HF's)."""
    report_to = configure_logger(logger_cfg, run_dir) if logger_cfg is not None else "none"
    precision = trainer_cfg.precision
    optimizers = {name.value for name in OptimizerNames}
    if trainer_cfg.optimizer not in optimizers:
        raise PeftrunError(f"trainer.optimizer={trainer_cfg.optimizer!r} is not a transformers optimizer; e.g. "
                           f"adamw_torch, adafactor, sgd (all: {', '.join(sorted(optimizers))})")
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
        optim=trainer_cfg.optimizer,  # adafactor: the Trainer turns relative_step and scale_parameter off
        seed=trainer_cfg.seed,
        data_seed=trainer_cfg.seed,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        logging_steps=trainer_cfg.logging_steps,
        logging_nan_inf_filter=False,  # a non-finite loss must reach the log (StopOnNonFinite fails the run)
        include_num_input_tokens_seen="non_padding",  # state.num_input_tokens_seen: all ranks, survives resume
        # eval_every alone saves at its evaluations (SelectBest): the selected step must be on disk
        save_strategy="steps" if trainer_cfg.save_every > 0 or trainer_cfg.eval_every > 0 else "no",
        save_steps=max(trainer_cfg.save_every or trainer_cfg.eval_every, 1),
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


class FirstStep(TrainerCallback):
    """Seconds from the process start to the first training step of this session (the record's to_first_step_s)."""

    def __init__(self) -> None:
        self.since_process_start: float | None = None

    def on_step_begin(self, args, state, control, **kwargs):
        if self.since_process_start is None:
            from peftrun.timing import since_start

            self.since_process_start = round(since_start(), 3)


class ConsoleProgress(TrainerCallback):
    """A rich progress bar with loss, learning rate and ETA; appends every log to train_log.jsonl.

    Only the world's process zero draws and writes: under torchrun the log has one line per logging step.
    """

    def __init__(self, log_path: str, console: Any) -> None:
        self.log_path = log_path
        self.console = console
        self.progress = None
        self.task = None
        self.started = 0.0
        self.tokens_at_start = 0

    def on_train_begin(self, args, state, control, **kwargs):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.started = time.perf_counter()
        self.tokens_at_start = state.num_input_tokens_seen  # > 0 when resuming
        if not state.is_world_process_zero:
            return
        if state.global_step > 0:  # resumed: steps after the checkpoint are trained again, drop their old lines
            _truncate_log(self.log_path, state.global_step)
        self.progress = Progress(
            TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
            TimeRemainingColumn(), console=self.console, transient=False,
        )
        self.progress.start()
        self.task = self.progress.add_task("train", total=state.max_steps, completed=state.global_step, info="")

    def on_step_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.update(self.task, completed=state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero:
            return
        logs = dict(logs or {})
        elapsed = time.perf_counter() - self.started
        entry = {"step": state.global_step, **logs, "elapsed_s": round(elapsed, 3)}
        with open(self.log_path, "a") as handle:
            handle.write(json.dumps(entry) + "\n")
        if self.progress is not None and "loss" in logs:
            lr = logs.get("learning_rate", float("nan"))
            tokens = state.num_input_tokens_seen - self.tokens_at_start
            info = f"loss {logs['loss']:.4f}  lr {lr:.2e}  {tokens / max(elapsed, 1e-9):,.0f} tok/s"
            self.progress.update(self.task, info=info)

    def on_train_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.stop()


def _truncate_log(path: str, last_step: int) -> None:
    """Keep the train_log.jsonl lines up to `last_step` (atomic rewrite; a line cut by SIGKILL is dropped)."""
    from peftrun.records import atomic_write_text

    if not os.path.exists(path):
        return
    with open(path) as handle:
        lines = handle.read().splitlines(keepends=True)
    kept = [line for line in lines if line.endswith("\n") and json.loads(line)["step"] <= last_step]
    if len(kept) < len(lines):
        atomic_write_text(path, "".join(kept))


def total_steps(n_examples: int, trainer_cfg: Any) -> int:
    """Optimizer steps a run will take (for the console and the record)."""
    if trainer_cfg.max_steps > 0:
        return trainer_cfg.max_steps
    per_epoch = math.ceil(n_examples / (trainer_cfg.batch_size * trainer_cfg.grad_accum))
    return math.ceil(per_epoch * trainer_cfg.epochs)


class StopOnSignal(TrainerCallback):
    """SIGTERM (Slurm preemption) or SIGINT: save a checkpoint at the end of the current step, then stop.

    `received` tells the caller the run was interrupted (its record says so and the next run resumes). Under
    torchrun the ranks agree every step (all-reduce of the signal number, max): ranks that stopped at
    different steps would deadlock in the next gradient all-reduce, and the checkpoint must be one step's.
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
        received = self.received or 0
        if args.world_size > 1 and torch.distributed.is_initialized():
            flag = torch.tensor([received], device=args.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            received = int(flag.item())
        if received:
            self.received = received
            control.should_save = True
            control.should_training_stop = True
        return control

    def on_train_end(self, args, state, control, **kwargs):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class LogBeforeSave(TrainerCallback):
    """Close the logging window at every checkpoint and at the last step (add after the callbacks that save).

    The log history (kept in each checkpoint's trainer_state.json) then covers every step exactly once, so
    `mean_logged_loss` gives the same training loss for a resumed run as for an uninterrupted one.
    """

    def on_step_end(self, args, state, control, **kwargs):
        if control.should_save or control.should_training_stop:
            control.should_log = True
        return control


def mean_logged_loss(history: list[dict[str, Any]]) -> float | None:
    """Mean training loss over all logged steps: each logged loss is the mean over the steps since the last log."""
    total = steps = 0.0
    previous = 0
    for entry in history:
        if "loss" in entry:
            span = entry["step"] - previous
            total += entry["loss"] * span
            steps += span
            previous = entry["step"]
    return total / steps if steps else None


def last_checkpoint(directory: str) -> str | None:
    """The newest usable `checkpoint-<step>` folder, or None (see `usable_checkpoint`)."""
    return usable_checkpoint(directory)[0]


CHECKPOINT_TENSOR_FILES = ("optimizer.pt", "scheduler.pt", "scaler.pt")  # + rng_state*.pth


def usable_checkpoint(directory: str) -> tuple[str | None, list[tuple[str, str]]]:
    """(the newest checkpoint whose every file reads, [(newer folder skipped, why)]).

    Usable = trainer_state.json (written last by the Trainer) parses, the trainable weights load, and the
    optimizer / scheduler / RNG files the Trainer will restore load (with weights_only, as the Trainer does). A
    folder cut mid-write by SIGKILL or corrupted on disk is skipped, naming it, and the previous one
    (save_total_limit keeps two) is used.
    """
    if not os.path.isdir(directory):
        return None, []
    steps = sorted((int(name.split("-")[-1]) for name in os.listdir(directory)
                    if name.startswith("checkpoint-") and name.split("-")[-1].isdigit()), reverse=True)
    skipped = []
    for step in steps:
        folder = os.path.join(directory, f"checkpoint-{step}")
        problem = _unreadable(folder)
        if problem is None:
            return folder, skipped
        skipped.append((folder, problem))
    return None, skipped


def _unreadable(folder: str) -> str | None:
    """Why the checkpoint in `folder` cannot be resumed from, or None when every file reads."""
    try:
        with open(os.path.join(folder, "trainer_state.json")) as handle:
            if "global_step" not in json.load(handle):
                return "trainer_state.json has no global_step"
    except (OSError, ValueError) as err:
        return f"trainer_state.json unreadable ({type(err).__name__})"
    try:
        load_file(os.path.join(folder, TRAINABLE_WEIGHTS))
    except Exception as err:  # safetensors raises its own error types for a truncated or garbled file
        return f"{TRAINABLE_WEIGHTS} unreadable ({type(err).__name__}: {str(err)[:80]})"
    from transformers.trainer_pt_utils import safe_globals

    names = [n for n in os.listdir(folder) if n in CHECKPOINT_TENSOR_FILES or
             (n.startswith("rng_state") and n.endswith(".pth"))]
    for name in names:
        try:
            with safe_globals():
                torch.load(os.path.join(folder, name), map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises RuntimeError, UnpicklingError, EOFError ... for a corrupt file
            return f"{name} unreadable ({type(err).__name__}: {str(err)[:80]})"
    return None


def finished_state(checkpoint: str | None) -> Any:
    """The TrainerState of `checkpoint` when it was saved at the run's last step (training is done), else None.

    Resuming such a checkpoint would make the Trainer take one step beyond max_steps; the caller loads its
    weights and goes straight to evaluation instead.
    """
    from transformers import TrainerState

    if checkpoint is None:
        return None
    state = TrainerState.load_from_json(os.path.join(checkpoint, "trainer_state.json"))
    return state if state.max_steps and state.global_step >= state.max_steps else None


class SaveAtEnd(TrainerCallback):
    """With periodic checkpoints, also save at the last step: a kill during evaluation then costs no training."""

    def on_step_end(self, args, state, control, **kwargs):
        if args.save_strategy != "no" and state.global_step >= state.max_steps:
            control.should_save = True
        return control


class StopOnNonFinite(TrainerCallback):
    """Stop as soon as a logged training loss is NaN or infinite; `diverged_at` = (step, loss) for the caller,
    which records the run as failed (its weights are garbage, whatever evaluation would print)."""

    def __init__(self) -> None:
        self.diverged_at: tuple[int, float] | None = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss) and self.diverged_at is None:
            self.diverged_at = (state.global_step, loss)
            control.should_training_stop = True
        return control


class SelectBest(TrainerCallback):
    """Every `every` steps and at the last step: evaluate the model (`evaluate()` -> the selection metric), keep the
    best step in the trainer state and save a checkpoint there.

    The state (best_metric, best_global_step, and one `select_<metric>` entry per evaluation in the log history) is
    written into every checkpoint, so a resumed run selects as an uninterrupted one; the Trainer's rotation keeps
    the best checkpoint besides the newest. The global RNG state is restored after each evaluation: training takes
    the same steps with or without it.
    """

    def __init__(self, every: int, evaluate: Any, metric: str, mode: str) -> None:
        self.every, self.evaluate, self.metric, self.mode = every, evaluate, metric, mode

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every and state.global_step < state.max_steps:
            return control
        rng = torch.get_rng_state()
        cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        try:
            value = float(self.evaluate())
        finally:
            torch.set_rng_state(rng)
            if cuda_rng is not None:
                torch.cuda.set_rng_state_all(cuda_rng)
            if model is not None:
                model.train()
        state.log_history.append({"step": state.global_step, f"select_{self.metric}": value})
        best = state.best_metric
        if math.isfinite(value) and (best is None or (value > best if self.mode == "max" else value < best)):
            state.best_metric, state.best_global_step = value, state.global_step
        control.should_save = True
        return control


def selection_summary(state: Any, metric: str) -> dict[str, Any]:
    """What the record says about checkpoint selection: every evaluation and the selected step."""
    key = f"select_{metric}"
    history = [[entry["step"], entry[key]] for entry in state.log_history if key in entry]
    return {"metric": metric, "evaluated": history, "selected_step": state.best_global_step,
            "selected_value": state.best_metric}


def non_finite_parameters(model: nn.Module) -> list[str]:
    """Names of trainable parameters holding NaN or inf."""
    return [name for name, tensor in trainable_state(model).items() if not torch.isfinite(tensor).all()]
