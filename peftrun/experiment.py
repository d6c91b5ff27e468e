"""One run, top to bottom: validate -> backbone -> method -> data -> train -> evaluate -> record.

Everything that can be checked without loading a model (names, keys, combinations, data files) is checked
first, so bad input fails in a second with one line, before any expensive work.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from peftrun.errors import PeftrunError
from peftrun.records import base_record, read_record, write_predictions, write_record


class Interrupted(Exception):
    """Training stopped on SIGTERM/SIGINT after saving a checkpoint; rerunning the command resumes."""


def is_main_process() -> bool:
    """Rank 0 under torchrun (or a single process): the only one that writes records and evaluates."""
    import os

    return int(os.environ.get("RANK", "0")) == 0


def run_experiment(cfg: DictConfig, run_dir: str | Path, overrides: list[str], console: Console) -> dict[str, Any]:
    """Run one experiment described by `cfg` in `run_dir`; returns the run record (also on disk)."""
    from peftrun.backbones import anatomy_for, load_backbone
    from peftrun.methods import apply_method, validate_method
    from peftrun.tasks.base import build_task

    run_dir = Path(run_dir)
    started = time.perf_counter()
    anatomy = anatomy_for(cfg.backbone.family)
    validate_method(cfg.method, anatomy)
    task = build_task(cfg.task, cfg.paths.data_dir)
    if anatomy.kind == "encoder":
        raise PeftrunError(
            f"task {cfg.task.name!r} generates text but backbone {cfg.backbone.name!r} is an encoder ({anatomy.family}); "
            "use a decoder or encoder-decoder backbone (e.g. backbone=tiny-gpt2, backbone=tiny-bart)"
        )
    config = OmegaConf.to_container(cfg, resolve=True)
    previous = read_record(run_dir)
    if previous is not None and previous.get("status") == "complete" and previous.get("config") == config:
        console.print(f"[green]{run_dir}: already complete with this config; skipping (delete results.json to rerun)")
        return previous
    record = base_record(run_dir, config, overrides, cfg.trainer.seed)
    record["started"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    save = write_record if is_main_process() else (lambda *_: None)
    save(run_dir, record)
    try:
        _run(cfg, run_dir, task, anatomy, record, console, started, load_backbone, apply_method, save)
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


def _run(cfg, run_dir, task, anatomy, record, console, started, load_backbone, apply_method, save) -> None:
    import torch
    from transformers import set_seed

    from peftrun.console import parameter_table, results_table

    set_seed(cfg.trainer.seed)
    train_examples = task.load(cfg.task.train_split, grouped=False) if _training(cfg) else []
    eval_sets = {split: task.load(split, grouped=True) for split in cfg.task.eval_splits} if _evaluating(cfg) else {}
    if cfg.task.max_train_examples is not None:
        train_examples = train_examples[: cfg.task.max_train_examples]
    if cfg.task.max_eval_examples is not None:
        eval_sets = {split: rows[: cfg.task.max_eval_examples] for split, rows in eval_sets.items()}

    dry_meta = cfg.trainer.dry_run and cfg.backbone.init == "random"
    backbone = load_backbone(cfg.backbone, cfg.paths, head="lm", meta=dry_meta)
    method = apply_method(backbone.model, backbone.anatomy, cfg.method)
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
            cfg, run_dir, backbone, anatomy, train_examples, record, console
        )
    if not is_main_process():
        return  # rank 0 saves the adapter and evaluates every example; the others are done
    method.save(run_dir / "adapter")
    save(run_dir, record)

    eval_started = time.perf_counter()
    predictions: list[dict[str, Any]] = []
    n_eval = 0
    for split, examples in eval_sets.items():
        texts = _generate(cfg, backbone, anatomy, examples, split, record, console)
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
    save(run_dir, record)
    console.print(results_table(record))


def _training(cfg) -> bool:
    return cfg.trainer.do_train and not cfg.trainer.dry_run


def _evaluating(cfg) -> bool:
    return cfg.trainer.do_eval and not cfg.trainer.dry_run


def _train(cfg, run_dir, backbone, anatomy, examples, record, console):
    from transformers.trainer_callback import PrinterCallback

    from peftrun.data import PaddingCollator, TokenizedDataset, tokenize_examples
    from peftrun.train import ConsoleProgress, PeftrunTrainer, StopOnSignal, last_checkpoint, training_arguments

    tok = tokenize_examples(examples, backbone.tokenizer, anatomy.kind, cfg.task.max_source_length,
                            cfg.task.max_target_length, cfg.paths.cache_dir)
    record["data"][cfg.task.train_split] = {
        "examples": len(tok), "truncated_sources": tok.truncated_sources, "truncated_targets": tok.truncated_targets,
    }
    dataset = TokenizedDataset(tok, anatomy.kind)
    collator = PaddingCollator(
        pad_token_id=backbone.tokenizer.pad_token_id, kind=anatomy.kind,
        decoder_start_token_id=getattr(backbone.model.config, "decoder_start_token_id", None),
    )
    progress = ConsoleProgress(str(run_dir / "train_log.jsonl"), console)
    stopper = StopOnSignal()
    checkpoints = str(run_dir / "checkpoints")
    resume_from = last_checkpoint(checkpoints)
    if cfg.trainer.resume and resume_from is None:
        raise PeftrunError(f"trainer.resume=true but {checkpoints} holds no checkpoint; drop trainer.resume")
    if resume_from is not None:
        console.print(f"[yellow]resuming from {resume_from}")
    trainer = PeftrunTrainer(
        model=backbone.model,
        args=training_arguments(cfg.trainer, checkpoints, True, cfg.logger, str(run_dir)),
        train_dataset=dataset,
        data_collator=collator,
        callbacks=[progress, stopper],
        anatomy=anatomy,
        label_smoothing=cfg.trainer.label_smoothing,
        lengths=dataset.lengths,
    )
    progress.trainer = trainer
    trainer.remove_callback(PrinterCallback)  # the rich progress bar and train_log.jsonl replace its prints
    t0 = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=resume_from)
    train_s = time.perf_counter() - t0
    if stopper.received is not None:
        raise Interrupted(f"stopped by signal {stopper.received} at step {trainer.state.global_step}; "
                          "checkpoint saved, run the same command again to resume")
    summary = {"steps": trainer.state.global_step, "final_loss": _last_loss(trainer.state.log_history),
               "train_loss": result.training_loss, "tokens": trainer.tokens_seen}
    return summary, round(train_s, 3), round(trainer.tokens_seen / max(train_s, 1e-9), 1)


def _last_loss(history: list[dict[str, Any]]) -> float | None:
    losses = [entry["loss"] for entry in history if "loss" in entry]
    return losses[-1] if losses else None


def _generate(cfg, backbone, anatomy, examples, split, record, console) -> list[str]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from peftrun.data import tokenize_examples
    from peftrun.generate import generate_texts

    prompts = tokenize_examples(examples, backbone.tokenizer, anatomy.kind, cfg.task.max_source_length,
                                cfg.task.max_target_length, cfg.paths.cache_dir, with_target=False)
    record["data"][split] = {"examples": len(prompts), "truncated_sources": prompts.truncated_sources}
    with Progress(TextColumn(f"[bold]eval {split}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console) as progress:
        bar = progress.add_task(split, total=len(prompts))
        return generate_texts(backbone.model, backbone.tokenizer, anatomy.kind, prompts.input_ids,
                              cfg.task.generation, on_batch=lambda n: progress.advance(bar, n))


def _peak_memory_mb(torch) -> float:
    if torch.cuda.is_available():
        return round(torch.cuda.max_memory_allocated() / 2**20, 1)
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux: KiB
