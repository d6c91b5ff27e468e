"""One run, top to bottom: validate -> backbone -> method -> data -> train -> evaluate -> record.

Everything that can be checked without loading a model (names, keys, combinations, data files, input lengths
against the backbone's positions) is checked first, so bad input fails in a second with one line, before any
expensive work. The formulation decided there (peftrun/formulation.py) is one object (peftrun/formulations/) that
gives the backbone head, the training data and loss, and the predictions: "text" generates (data.py, train.py,
generate.py); "rank" scores answer options by log-likelihood; a head formulation classifies, scores candidates or
tags tokens (head_data.py, heads.py). A prompt config (prompt=..., peftrun/prompting/) rewrites sources into
prompts with demonstrations; methods that train nothing (method=icl) only evaluate.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from peftrun.errors import PeftrunError
from peftrun.prompting.layout import reads_natural_layout
from peftrun.records import base_record, write_predictions, write_record
from peftrun.rundir import check_reuse, claim, previous_record
from peftrun.timing import since_start, start_job


class Interrupted(Exception):
    """Training stopped on SIGTERM/SIGINT after saving a checkpoint; rerunning the command resumes."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


def is_main_process() -> bool:
    """Rank 0 under torchrun (or a single process): the only one that writes records and evaluates."""
    import os

    return int(os.environ.get("RANK", "0")) == 0


def run_experiment(cfg: DictConfig, run_dir: str | Path, overrides: list[str], console: Console) -> dict[str, Any]:
    """Run one experiment described by `cfg` in `run_dir`; returns the run record (also on disk)."""
    from peftrun.backbones import anatomy_for, load_backbone
    from peftrun.formulation import resolve_formulation
    from peftrun.formulations import build_formulation
    from peftrun.instruction.ipt import check_prompt_use
    from peftrun.lengths import check_input_lengths
    from peftrun.precision import check_precision
    from peftrun.tasks.base import build_task
    from peftrun.threads import check_threads
    from peftrun.validation import validate_config

    run_dir = Path(run_dir)
    job_started = start_job()  # the process start, or this sweep job's start
    started = time.perf_counter()
    validate_config(cfg)  # values and names, from the config alone
    config = OmegaConf.to_container(cfg, resolve=True)
    if config.get("prompt", "absent") is None:
        del config["prompt"]  # prompt=none: records stay as they were before the prompt group existed
    with _owned(run_dir):  # one process per run directory, from here to the final record
        previous = previous_record(run_dir)
        if check_reuse(run_dir, previous, config):
            console.print(f"[green]{run_dir}: already complete with this config; skipping (delete results.json to "
                          "rerun)")
            return previous
        anatomy = anatomy_for(cfg.backbone.family)
        task = build_task(cfg.task, cfg.paths.data_dir)
        check_prompt_use(cfg)  # IPT needs demonstrations; a mixture takes none (peftrun/instruction/ipt.py)
        name = resolve_formulation(task, cfg.backbone, anatomy.kind)  # "text", "rank" or the task's head
        lengths_checked = check_input_lengths(cfg, anatomy.kind, _length_layout(name))  # config.json only
        data = _load_data(cfg, task)  # files read, rows counted, scorers rehearsed: before any import of torch
        formulation = build_formulation(name, cfg, task, _prompting(cfg, task, data[1]))
        if _evaluation_only(cfg) and formulation.trains_new_head:
            raise PeftrunError(f"method {cfg.method.name!r} trains nothing, but the {name} formulation puts a new "
                               f"head on backbone {cfg.backbone.name!r} that must train; use task.formulation=rank "
                               "or text with a decoder or encoder-decoder backbone")
        from peftrun.methods import apply_method, validate_method  # imports transformers: after the cheap checks

        validate_method(cfg.method, anatomy)
        check_threads(cfg.trainer.threads)
        check_precision(cfg.trainer.precision)
        if cfg.method.init_from:  # prompt transfer: the source adapter must exist before anything loads
            from peftrun.instruction.transfer import adapter_dir

            adapter_dir(cfg.method.init_from)
        record = base_record(run_dir, config, overrides, cfg.trainer.seed)
        record["started"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        record["timings"]["startup_s"] = round(started - job_started, 3)  # interpreter, imports, Hydra (1st job)
        save = write_record if is_main_process() else (lambda *_: None)
        try:
            with _signals_interrupt():
                save(run_dir, record)
                _run(cfg, run_dir, task, formulation, lengths_checked, record, console, started, load_backbone,
                     apply_method, save, data)
        except Interrupted as err:
            record["status"] = "interrupted"
            record["error"] = str(err)
            save(run_dir, record)
            raise
        except BaseException as err:
            record["status"] = "failed"
            record["error"] = f"{type(err).__name__}: {err}"
            save(run_dir, record)
            raise
    return record


def _owned(run_dir: Path):
    """Rank 0 holds the run directory's lock (peftrun/rundir.py); the other ranks of a torchrun job share it."""
    return claim(run_dir) if is_main_process() else nullcontext()


PHASE = {"name": "set-up"}  # what the run is doing, for the interruption message


@contextmanager
def _signals_interrupt():
    """SIGTERM / SIGINT outside training (set-up, evaluation) end the run as `interrupted` (exit 128 + signal)
    instead of leaving a record that says `running`; during training StopOnSignal takes over (checkpoint first)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return

    def handle(signum, _frame):
        raise Interrupted(f"stopped by signal {signum} during {PHASE['name']}; run the same command again "
                          "(training resumes from its newest checkpoint)", signum)

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGTERM, signal.SIGINT)}
    PHASE["name"] = "set-up"
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _length_layout(formulation: str) -> str:
    """What peftrun/lengths.py checks: rank builds the text layout (prompt + answer)."""
    return "text" if formulation == "rank" else formulation


def _evaluation_only(cfg) -> bool:
    """Methods that train nothing (method=icl: no deltas, frozen backbone): no optimizer, no checkpoint, and the
    natural prompt layout."""
    return reads_natural_layout(cfg)


def _prompting(cfg, task, eval_sets):
    """The prompt config's builder and demonstration pool (peftrun/prompting/), checked before any model loads;
    None for prompt=none."""
    if cfg.get("prompt") is None:
        return None
    from peftrun.formulations import Prompting
    from peftrun.prompting.build import PromptBuilder

    builder = PromptBuilder(cfg.prompt, task, cfg.paths.data_dir)
    pool = builder.pool(task.load(cfg.task.train_split, grouped=False)) if cfg.prompt.k > 0 else []
    budget = min(cfg.task.max_source_length, cfg.prompt.max_tokens or cfg.task.max_source_length)
    for examples in eval_sets.values():  # loaded and capped as the run evaluates them
        builder.precheck(examples, budget)
    return Prompting(builder, pool, natural=_evaluation_only(cfg))


def _run(cfg, run_dir, task, formulation, lengths_checked, record, console, started, load_backbone, apply_method,
         save, data) -> None:
    import torch
    from transformers import set_seed

    from peftrun.console import parameter_table, results_table
    from peftrun.lengths import check_input_lengths
    from peftrun.precision import resolve_precision
    from peftrun.threads import set_compute_threads

    set_seed(cfg.trainer.seed)
    train_examples, eval_sets, select_examples = data

    dry_meta = cfg.trainer.dry_run and cfg.backbone.init == "random"
    backbone = load_backbone(cfg.backbone, cfg.paths, head=formulation.backbone_head,
                             num_labels=formulation.num_labels(), meta=dry_meta)
    record["threads"] = set_compute_threads(cfg.trainer.threads, backbone.model, backbone.spec)
    record["precision"] = resolve_precision(cfg.trainer, backbone.model, backbone.spec)  # auto -> bf16 | fp32
    if not lengths_checked:  # a hub id whose config.json was not cached: check on the loaded config
        check_input_lengths(cfg, backbone.kind, _length_layout(formulation.name), backbone.model.config.to_dict())
    # a head formulation's head is new: it trains (and is saved) with every method
    method = apply_method(backbone.model, backbone.anatomy, cfg.method, tokenizer=backbone.tokenizer,
                          train_head=formulation.trains_new_head)
    if cfg.method.init_from:
        from peftrun.instruction.transfer import init_prompts_from

        record["init_from"] = init_prompts_from(method, cfg.method.init_from)
    record["backbone"] = backbone.description
    record["params"] = method.param_report()
    console.print(parameter_table(record["params"], title=f"{cfg.backbone.name} + {cfg.method.name}"))
    if cfg.trainer.dry_run:
        record["status"] = "dry_run"
        record["timings"]["setup_s"] = round(time.perf_counter() - started, 3)
        save(run_dir, record)
        return

    record["timings"]["setup_s"] = round(time.perf_counter() - started, 3)
    if train_examples:
        evaluate = _selection_evaluator(cfg, backbone, task, formulation, select_examples)
        record["train"], record["timings"]["train_s"], record["timings"]["train_tokens_per_s"] = _train(
            cfg, run_dir, backbone, formulation, train_examples, record, console, evaluate, task
        )
    if not is_main_process():
        return  # rank 0 saves the adapter and evaluates every example; the others are done
    PHASE["name"] = "evaluation"
    if _evaluation_only(cfg):
        record["trained"] = False  # nothing trained: no optimizer, no adapter, no checkpoint
    else:
        method.save(run_dir / "adapter")
    save(run_dir, record)

    if method.mergeable and eval_sets:  # saved unmerged above; evaluate with zero added latency (LoRA's claim)
        method.merge()
        record["eval_merged"] = True
    eval_started = time.perf_counter()
    predictions: list[dict[str, Any]] = []
    n_eval = 0
    from peftrun.instruction.multitask_head import restrict_to_member

    for split, examples in eval_sets.items():
        with restrict_to_member(backbone.model, task, split, formulation.name), _autocast(cfg, backbone):
            texts, extras = formulation.predict(backbone, examples, split, record,
                                                lambda name, total: _eval_progress(name, total, console))
        record["metrics"][split] = task.score(texts, examples)
        n_eval += len(examples)
        rows = [
            {"split": split, "id": ex.id, "input": ex.source, "prediction": text, "references": list(ex.references)}
            for ex, text in zip(examples, texts, strict=True)
        ]
        if extras is not None:  # rank scores, demonstration ids (only formulations that have them)
            rows = [{**row, **extra} for row, extra in zip(rows, extras, strict=True)]
        predictions += rows
    record["metrics"].update(task.metric_summary(record["metrics"]))
    if eval_sets:
        eval_s = time.perf_counter() - eval_started
        record["timings"]["eval_s"] = round(eval_s, 3)
        record["timings"]["eval_examples_per_s"] = round(n_eval / max(eval_s, 1e-9), 3)
        write_predictions(run_dir / "predictions.jsonl", predictions)
    record["peak_memory_mb"] = _peak_memory_mb(torch)
    record["status"] = "complete"
    record["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    _throughput(record, backbone.model, eval_started + record["timings"].get("eval_s", 0.0))
    save(run_dir, record)
    console.print(results_table(record))


def _load_data(cfg, task) -> tuple[list, dict[str, list], list]:
    """(training examples, {eval split: grouped examples}, examples evaluated during training for checkpoint
    selection) as the run will use them, checked (see below)."""
    train_examples = task.load(cfg.task.train_split, grouped=False) if _training(cfg) else []
    eval_sets = {split: task.load(split, grouped=True) for split in task.evaluation_splits()} if _evaluating(cfg) else {}
    selecting = _training(cfg) and cfg.trainer.eval_every > 0
    select_examples = task.load(cfg.trainer.select_split, grouped=True) if selecting else []
    if cfg.task.max_train_examples is not None:
        train_examples = train_examples[: cfg.task.max_train_examples]
    if cfg.task.max_eval_examples is not None:
        eval_sets = {split: rows[: cfg.task.max_eval_examples] for split, rows in eval_sets.items()}
        select_examples = select_examples[: cfg.task.max_eval_examples]
    _check_usable_rows(cfg, train_examples, eval_sets)
    _rehearse_scoring(task, eval_sets)
    if selecting:
        if not select_examples:
            raise PeftrunError(f"trainer.select_split={cfg.trainer.select_split!r} has no usable example")
        known = _rehearse_scoring(task, {cfg.trainer.select_split: select_examples})
        if cfg.trainer.select_metric not in known:
            raise PeftrunError(f"trainer.select_metric={cfg.trainer.select_metric!r} is not a metric task "
                               f"{cfg.task.name!r} computes here; known: {', '.join(known)}")
    return train_examples, eval_sets, select_examples


def _check_usable_rows(cfg, train_examples, eval_sets) -> None:
    """A run asked to train must have training rows, and every evaluated split rows to score (the loaders drop
    malformed rows): knowable before the backbone loads, so no training is wasted on a run that cannot finish."""
    if _training(cfg) and not train_examples:
        raise PeftrunError(f"task {cfg.task.name!r}: split {cfg.task.train_split!r} has no usable training example "
                           "(check task.data_dir / task.train_split and the file's rows), or set trainer.do_train=false")
    empty = [split for split, rows in eval_sets.items() if not rows]
    if empty:
        raise PeftrunError(f"task {cfg.task.name!r}: eval split {empty[0]!r} has no usable example (check "
                           "task.eval_splits and the file's rows)")


def _rehearse_scoring(task, eval_sets) -> list[str]:
    """Score one example of each eval split against its own reference before training, so a metric name that
    the task does not compute (task.metrics) or a scorer that cannot read the split fails now, not after it.
    Returns the metric names the task reported."""
    names: list[str] = []
    for examples in eval_sets.values():
        first = examples[0]
        names = list(task.score([first.references[0] if first.references else ""], [first]))
    return names


def _training(cfg) -> bool:
    return cfg.trainer.do_train and not cfg.trainer.dry_run and not _evaluation_only(cfg)


def _evaluating(cfg) -> bool:
    return cfg.trainer.do_eval and not cfg.trainer.dry_run


def _selection_evaluator(cfg, backbone, task, formulation, examples):
    """`evaluate()` -> trainer.select_metric on trainer.select_split for the model as it is (eval_every), or None."""
    if cfg.trainer.eval_every <= 0:
        return None
    quiet = Console(quiet=True)

    def evaluate() -> float:
        scratch = {"data": {}, "timings": {}}  # selection passes leave the run record's counts and timings alone
        texts, _ = formulation.predict(backbone, examples, cfg.trainer.select_split, scratch,
                                       lambda name, total: _eval_progress(name, total, quiet))
        return task.score(texts, examples)[cfg.trainer.select_metric]

    return evaluate


def _train(cfg, run_dir, backbone, formulation, examples, record, console, evaluate=None, task=None):
    from transformers.trainer_callback import PrinterCallback

    from peftrun.train import (
        ConsoleProgress,
        FirstStep,
        LogBeforeSave,
        SaveAtEnd,
        StopOnNonFinite,
        StopOnSignal,
        finished_state,
        load_trainable,
        mean_logged_loss,
        selection_summary,
        training_arguments,
    )

    data_started = time.perf_counter()
    dataset, collator = formulation.training_data(backbone, examples, record)
    trainer_class, extra = formulation.trainer()
    if task is not None and task.name == "mixture":
        from peftrun.instruction.training import mixture_trainer

        trainer_class, extra = mixture_trainer(task, trainer_class, extra, len(dataset), record)
    record["timings"]["train_data_s"] = round(time.perf_counter() - data_started, 3)  # tokenise (or cache hit)
    progress = ConsoleProgress(str(run_dir / "train_log.jsonl"), console)
    stopper, divergence, first_step = StopOnSignal(), StopOnNonFinite(), FirstStep()
    checkpoints = str(run_dir / "checkpoints")
    resume_from = _resume_point(checkpoints, console)
    if cfg.trainer.resume and resume_from is None:
        raise PeftrunError(f"trainer.resume=true but {checkpoints} holds no checkpoint; drop trainer.resume")
    if resume_from is not None:
        console.print(f"[yellow]resuming from {resume_from}")
    trainer = trainer_class(
        model=backbone.model,
        args=training_arguments(cfg.trainer, checkpoints, True, cfg.logger, str(run_dir)),
        train_dataset=dataset,
        data_collator=collator,
        callbacks=[progress, stopper, divergence, *_selection(cfg, evaluate), SaveAtEnd(), LogBeforeSave(), first_step],
        anatomy=backbone.anatomy,
        label_smoothing=cfg.trainer.label_smoothing,
        lengths=dataset.lengths,
        **extra,
    )
    trainer.remove_callback(PrinterCallback)  # the rich progress bar and train_log.jsonl replace its prints
    t0 = time.perf_counter()
    finished = finished_state(resume_from)
    if finished is not None:  # saved at the last step: resuming would train one step too many
        PHASE["name"] = "evaluation"  # all that is left
        console.print(f"[yellow]training finished at step {finished.global_step}: evaluating {resume_from}")
        load_trainable(trainer.model, resume_from)
        trainer.state = finished
        progress.tokens_at_start = trainer.tokens_seen
    else:
        PHASE["name"] = "training"
        trainer.train(resume_from_checkpoint=resume_from)
    train_s = time.perf_counter() - t0
    record["timings"]["to_first_step_s"] = first_step.since_process_start
    if stopper.received is not None:
        raise Interrupted(f"stopped by signal {stopper.received} at step {trainer.state.global_step}; "
                          "checkpoint saved, run the same command again to resume", stopper.received)
    _check_finite(cfg, trainer, divergence)
    selection = None
    if evaluate is not None:  # the final evaluation (and the saved adapter) use the selected checkpoint
        selection = selection_summary(trainer.state, cfg.trainer.select_metric)
        best = os.path.join(checkpoints, f"checkpoint-{selection['selected_step']}")
        if selection["selected_step"] is None or not os.path.isdir(best):
            raise PeftrunError(f"no checkpoint to select: trainer.select_metric={cfg.trainer.select_metric} was never "
                               f"finite on {cfg.trainer.select_split}, or {best} is gone")
        load_trainable(trainer.model, best)
        console.print(f"[green]selected step {selection['selected_step']} ({cfg.trainer.select_metric} "
                      f"{selection['selected_value']:.4f} on {cfg.trainer.select_split})")
    # from the log history (restored on resume), so a resumed run reports what an uninterrupted one does
    summary = {"steps": trainer.state.global_step, "final_loss": _last_loss(trainer.state.log_history),
               "train_loss": mean_logged_loss(trainer.state.log_history), "tokens": trainer.tokens_seen,
               "resumed_from": resume_from, **({"selection": selection} if selection else {})}
    tokens_per_s = (trainer.tokens_seen - progress.tokens_at_start) / max(train_s, 1e-9)  # this session's
    return summary, round(train_s, 3), round(tokens_per_s, 1)


def _selection(cfg, evaluate) -> list:
    """The checkpoint-selection callback when trainer.eval_every > 0 (peftrun/train.py SelectBest)."""
    from peftrun.train import SelectBest

    if evaluate is None:
        return []
    return [SelectBest(cfg.trainer.eval_every, evaluate, cfg.trainer.select_metric, cfg.trainer.select_mode)]


def _resume_point(checkpoints: str, console: Console) -> str | None:
    """The newest checkpoint whose files all read; each newer unreadable one is named and skipped."""
    from peftrun.train import usable_checkpoint

    resume_from, skipped = usable_checkpoint(checkpoints)
    for folder, why in skipped:
        console.print(f"[yellow]skipping {folder}: {why}")
    return resume_from


def _check_finite(cfg, trainer, divergence) -> None:
    """A loss or a trainable weight that became NaN / inf fails the run (its predictions would mean nothing)."""
    from peftrun.train import non_finite_parameters

    if divergence.diverged_at is not None:
        step, loss = divergence.diverged_at
        raise PeftrunError(f"training diverged: the loss logged at step {step} is {loss} (trainer.lr="
                           f"{cfg.trainer.lr}); lower trainer.lr or set trainer.max_grad_norm, in a new run dir")
    bad = non_finite_parameters(trainer.model)
    if bad:
        raise PeftrunError(f"training diverged: {len(bad)} trainable tensors hold NaN/inf (e.g. {bad[0]}; "
                           f"trainer.lr={cfg.trainer.lr}); lower trainer.lr or set trainer.max_grad_norm, in a new "
                           "run dir")


def _last_loss(history: list[dict[str, Any]]) -> float | None:
    losses = [entry["loss"] for entry in history if "loss" in entry]
    return losses[-1] if losses else None


@contextmanager
def _eval_progress(split: str, total: int, console: Console):
    """A progress bar for one eval split; yields `advance(n)`."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn(f"[bold]eval {split}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console) as progress:
        bar = progress.add_task(split, total=total)
        yield lambda n: progress.advance(bar, n)


def _autocast(cfg, backbone):
    """Evaluation in the training precision (peftrun/precision.py)."""
    from peftrun.precision import eval_autocast

    return eval_autocast(cfg.trainer.precision, backbone.model.device)


def _throughput(record: dict[str, Any], model, last_prediction: float) -> None:
    """Tokens/s and model FLOP/s (peftrun/timing.py: 6N per trained token, 2N per generated or prompt token,
    N = non-embedding parameters), the time from the last prediction to now, and the total since process start."""
    from peftrun.timing import model_flops_per_s, non_embedding_params

    timings = record["timings"]
    params = non_embedding_params(model)
    timings["flops_params"] = params
    tokens = record.get("train", {}).get("tokens")
    if tokens and timings.get("train_s"):
        timings["train_model_flops_per_s"] = round(model_flops_per_s(params, tokens, timings["train_s"], 6))
    splits = [d for d in record["data"].values() if "generated_tokens" in d]
    if splits and timings.get("generate_s"):
        generated = sum(d["generated_tokens"] for d in splits)
        processed = generated + sum(d["prompt_tokens"] for d in splits)
        timings["generated_tokens_per_s"] = round(generated / max(timings["generate_s"], 1e-9), 1)
        timings["generate_model_flops_per_s"] = round(model_flops_per_s(params, processed, timings["generate_s"], 2))
    timings["finish_s"] = round(time.perf_counter() - last_prediction, 3)  # scoring done: records, predictions
    timings["total_s"] = round(since_start(), 3)  # process start -> final record; the exit follows


def _peak_memory_mb(torch) -> float:
    if torch.cuda.is_available():
        return round(torch.cuda.max_memory_allocated() / 2**20, 1)
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux: KiB
