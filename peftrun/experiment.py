"""One run, top to bottom: validate -> backbone -> method -> data -> train -> evaluate -> record.

Everything that can be checked without loading a model (names, keys, combinations, data files, input lengths
against the backbone's positions) is checked first, so bad input fails in a second with one line, before any
expensive work. The formulation decided there (peftrun/formulation.py) picks the backbone head, the training
data and loss, and the predictions: "text" generates (data.py, train.py, generate.py); a head formulation
classifies, scores candidates or tags tokens (head_data.py, heads.py).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from peftrun.errors import PeftrunError
from peftrun.records import base_record, read_record, write_predictions, write_record
from peftrun.timing import PROCESS_STARTED, since_start


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
    from peftrun.lengths import check_input_lengths
    from peftrun.precision import check_precision
    from peftrun.tasks.base import build_task
    from peftrun.threads import check_threads

    run_dir = Path(run_dir)
    started = time.perf_counter()
    anatomy = anatomy_for(cfg.backbone.family)
    task = build_task(cfg.task, cfg.paths.data_dir)
    formulation = resolve_formulation(task, cfg.backbone, anatomy.kind)  # "text" or the task's head
    lengths_checked = check_input_lengths(cfg, anatomy.kind, formulation)  # config.json only, no weights
    from peftrun.methods import apply_method, validate_method  # imports transformers: after the cheap checks

    validate_method(cfg.method, anatomy)
    check_threads(cfg.trainer.threads)
    check_precision(cfg.trainer.precision)
    config = OmegaConf.to_container(cfg, resolve=True)
    previous = read_record(run_dir)
    changed = _changed_keys(previous.get("config") or {}, config) if previous is not None else []
    if previous is not None and not changed and previous.get("status") == "complete":
        console.print(f"[green]{run_dir}: already complete with this config; skipping (delete results.json to rerun)")
        return previous
    if changed and any((run_dir / "checkpoints").glob("checkpoint-*")):
        raise PeftrunError(
            f"{run_dir} holds checkpoints of a run with a different config ({', '.join(changed[:5])}); "
            f"choose another hydra.run.dir, or delete {run_dir / 'checkpoints'} to start over"
        )
    record = base_record(run_dir, config, overrides, cfg.trainer.seed)
    record["started"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    record["timings"]["startup_s"] = round(started - PROCESS_STARTED, 3)  # interpreter, imports, Hydra
    save = write_record if is_main_process() else (lambda *_: None)
    save(run_dir, record)
    try:
        _run(cfg, run_dir, task, formulation, lengths_checked, record, console, started, load_backbone, apply_method,
             save)
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


SAME_RUN_KEYS = ("trainer.resume", "paths", "logger")  # where files live and how progress is shown: same run


def _changed_keys(before: dict[str, Any], after: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted config keys whose values differ, except SAME_RUN_KEYS (a resumed job may run on another node)."""
    changed = []
    for key in sorted(set(before) | set(after)):
        name = f"{prefix}{key}"
        old, new = before.get(key), after.get(key)
        if name in SAME_RUN_KEYS:
            continue
        if isinstance(old, dict) and isinstance(new, dict):
            changed += _changed_keys(old, new, name + ".")
        elif old != new:
            changed.append(name)
    return changed


def _run(cfg, run_dir, task, formulation, lengths_checked, record, console, started, load_backbone, apply_method,
         save) -> None:
    import torch
    from transformers import set_seed

    from peftrun.console import parameter_table, results_table
    from peftrun.formulation import backbone_head, num_outputs
    from peftrun.lengths import check_input_lengths
    from peftrun.threads import set_compute_threads

    set_seed(cfg.trainer.seed)
    train_examples = task.load(cfg.task.train_split, grouped=False) if _training(cfg) else []
    eval_sets = {split: task.load(split, grouped=True) for split in cfg.task.eval_splits} if _evaluating(cfg) else {}
    if cfg.task.max_train_examples is not None:
        train_examples = train_examples[: cfg.task.max_train_examples]
    if cfg.task.max_eval_examples is not None:
        eval_sets = {split: rows[: cfg.task.max_eval_examples] for split, rows in eval_sets.items()}

    dry_meta = cfg.trainer.dry_run and cfg.backbone.init == "random"
    backbone = load_backbone(cfg.backbone, cfg.paths, head=backbone_head(formulation),
                             num_labels=num_outputs(task, formulation), meta=dry_meta)
    record["threads"] = set_compute_threads(cfg.trainer.threads, backbone.model, backbone.spec)
    if not lengths_checked:  # a hub id whose config.json was not cached: check on the loaded config
        check_input_lengths(cfg, backbone.kind, formulation, backbone.model.config.to_dict())
    # a head formulation's head is new: it trains (and is saved) with every method
    method = apply_method(backbone.model, backbone.anatomy, cfg.method, tokenizer=backbone.tokenizer,
                          train_head=formulation != "text")
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
        record["train"], record["timings"]["train_s"], record["timings"]["train_tokens_per_s"] = _train(
            cfg, run_dir, backbone, formulation, train_examples, record, console
        )
    if not is_main_process():
        return  # rank 0 saves the adapter and evaluates every example; the others are done
    method.save(run_dir / "adapter")
    save(run_dir, record)

    if method.mergeable and eval_sets:  # saved unmerged above; evaluate with zero added latency (LoRA's claim)
        method.merge()
        record["eval_merged"] = True
    eval_started = time.perf_counter()
    predictions: list[dict[str, Any]] = []
    n_eval = 0
    for split, examples in eval_sets.items():
        if formulation == "text":
            texts = _generate(cfg, backbone, examples, split, record, console)
        else:
            texts = _classify(cfg, backbone, task, formulation, examples, split, record, console)
        record["metrics"][split] = task.score(texts, examples)
        n_eval += len(examples)
        predictions += [
            {"split": split, "id": ex.id, "input": ex.source, "prediction": text, "references": list(ex.references)}
            for ex, text in zip(examples, texts, strict=True)
        ]
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


def _training(cfg) -> bool:
    return cfg.trainer.do_train and not cfg.trainer.dry_run


def _evaluating(cfg) -> bool:
    return cfg.trainer.do_eval and not cfg.trainer.dry_run


def _train(cfg, run_dir, backbone, formulation, examples, record, console):
    from transformers.trainer_callback import PrinterCallback

    from peftrun.train import (
        ConsoleProgress,
        FirstStep,
        LogBeforeSave,
        PeftrunTrainer,
        StopOnSignal,
        last_checkpoint,
        mean_logged_loss,
        training_arguments,
    )

    data_started = time.perf_counter()
    if formulation == "text":
        dataset, collator = _text_training_data(cfg, backbone, examples, record)
        trainer_class, extra = PeftrunTrainer, {}
    else:
        from peftrun.heads import HeadTrainer

        dataset, collator = _head_training_data(cfg, backbone, formulation, examples, record)
        trainer_class, extra = HeadTrainer, {"head": formulation}
    record["timings"]["train_data_s"] = round(time.perf_counter() - data_started, 3)  # tokenise (or cache hit)
    progress = ConsoleProgress(str(run_dir / "train_log.jsonl"), console)
    first_step = FirstStep()
    stopper = StopOnSignal()
    checkpoints = str(run_dir / "checkpoints")
    resume_from = last_checkpoint(checkpoints)
    if cfg.trainer.resume and resume_from is None:
        raise PeftrunError(f"trainer.resume=true but {checkpoints} holds no checkpoint; drop trainer.resume")
    if resume_from is not None:
        console.print(f"[yellow]resuming from {resume_from}")
    trainer = trainer_class(
        model=backbone.model,
        args=training_arguments(cfg.trainer, checkpoints, True, cfg.logger, str(run_dir)),
        train_dataset=dataset,
        data_collator=collator,
        callbacks=[progress, stopper, LogBeforeSave(), first_step],
        anatomy=backbone.anatomy,
        label_smoothing=cfg.trainer.label_smoothing,
        lengths=dataset.lengths,
        **extra,
    )
    trainer.remove_callback(PrinterCallback)  # the rich progress bar and train_log.jsonl replace its prints
    t0 = time.perf_counter()
    trainer.train(resume_from_checkpoint=resume_from)
    train_s = time.perf_counter() - t0
    record["timings"]["to_first_step_s"] = first_step.since_process_start
    if stopper.received is not None:
        raise Interrupted(f"stopped by signal {stopper.received} at step {trainer.state.global_step}; "
                          "checkpoint saved, run the same command again to resume", stopper.received)
    # from the log history (restored on resume), so a resumed run reports what an uninterrupted one does
    summary = {"steps": trainer.state.global_step, "final_loss": _last_loss(trainer.state.log_history),
               "train_loss": mean_logged_loss(trainer.state.log_history), "tokens": trainer.tokens_seen,
               "resumed_from": resume_from}
    tokens_per_s = (trainer.tokens_seen - progress.tokens_at_start) / max(train_s, 1e-9)  # this session's
    return summary, round(train_s, 3), round(tokens_per_s, 1)


def _text_training_data(cfg, backbone, examples, record):
    """(dataset, collator) of the text formulation: source + target token ids (peftrun/data.py)."""
    from peftrun.data import PaddingCollator, TokenizedDataset, tokenize_examples

    tok = tokenize_examples(examples, backbone.tokenizer, backbone.kind, cfg.task.max_source_length,
                            cfg.task.max_target_length, cfg.paths.cache_dir)
    record["data"][cfg.task.train_split] = {
        "examples": len(tok), "truncated_sources": tok.truncated_sources, "truncated_targets": tok.truncated_targets,
    }
    collator = PaddingCollator(
        pad_token_id=backbone.tokenizer.pad_token_id, kind=backbone.kind,
        decoder_start_token_id=getattr(backbone.model.config, "decoder_start_token_id", None),
    )
    return TokenizedDataset(tok, backbone.kind), collator


def _head_training_data(cfg, backbone, head, examples, record):
    """(dataset, collator) of a head formulation (peftrun/head_data.py); examples without a gold label are left
    out (ReCoRD queries whose answer is no passage entity) and counted."""
    from peftrun.head_data import HeadCollator, HeadDataset, encode_head_examples

    data = encode_head_examples(examples, backbone.tokenizer, head, cfg.task.max_source_length, cfg.paths.cache_dir)
    dataset = HeadDataset(data, head)
    record["data"][cfg.task.train_split] = {"examples": len(dataset), "truncated_sources": data.truncated,
                                            "unlabelled": len(data) - len(dataset)}
    if not len(dataset):
        raise PeftrunError(f"task {cfg.task.name!r}: none of the {len(data)} {cfg.task.train_split} examples has a "
                           "gold label for the head; check task.train_split and the data")
    return dataset, HeadCollator(backbone.tokenizer.pad_token_id, head)


def _last_loss(history: list[dict[str, Any]]) -> float | None:
    losses = [entry["loss"] for entry in history if "loss" in entry]
    return losses[-1] if losses else None


def _generate(cfg, backbone, examples, split, record, console) -> list[str]:
    """The text formulation's predictions: generated texts."""
    from peftrun.data import tokenize_examples
    from peftrun.generate import decode_texts, generate_ids

    prompts = tokenize_examples(examples, backbone.tokenizer, backbone.kind, cfg.task.max_source_length,
                                cfg.task.max_target_length, cfg.paths.cache_dir, with_target=False)
    record["data"][split] = {"examples": len(prompts), "truncated_sources": prompts.truncated_sources}
    started = time.perf_counter()
    with _eval_progress(split, len(prompts), console) as advance, _autocast(cfg, backbone):
        ids = generate_ids(backbone.model, backbone.tokenizer, backbone.kind, prompts.input_ids,
                           cfg.task.generation, on_batch=advance)
    _count_generation(record, split, prompts.input_ids, ids, time.perf_counter() - started)
    return decode_texts(backbone.tokenizer, ids)


def _classify(cfg, backbone, task, head, examples, split, record, console) -> list[str]:
    """A head formulation's predictions as label strings (batches of task.generation.batch_size examples)."""
    from peftrun.head_data import encode_head_examples
    from peftrun.heads import label_strings, predict

    data = encode_head_examples(examples, backbone.tokenizer, head, cfg.task.max_source_length, cfg.paths.cache_dir)
    record["data"][split] = {"examples": len(data), "truncated_sources": data.truncated}
    with _eval_progress(split, len(data), console) as advance, _autocast(cfg, backbone):
        predicted = predict(backbone.model, data, head, backbone.tokenizer.pad_token_id,
                            cfg.task.generation.batch_size, on_batch=advance)
    return label_strings(task, examples, predicted, head)


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


def _count_generation(record: dict[str, Any], split: str, prompts: list[list[int]], generated: list[list[int]],
                      seconds: float) -> None:
    """Prompt and generated token counts of a split (record.data) and the generation time (record.timings)."""
    record["data"][split]["prompt_tokens"] = sum(map(len, prompts))
    record["data"][split]["generated_tokens"] = sum(map(len, generated))
    record["timings"]["generate_s"] = round(record["timings"].get("generate_s", 0.0) + seconds, 3)


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
