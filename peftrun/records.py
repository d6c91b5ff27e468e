"""The run record (results.json) and predictions.jsonl, written atomically (peftrun/io.py).

results.json schema (version 1):
  schema_version, status ("running" | "complete" | "dry_run" | "failed" | "interrupted": SIGTERM/SIGINT in any
  phase, a checkpoint saved when in training, the same command resumes; "complete" only when everything asked was
  done: training took its steps with a finite loss, every eval split was scored), error (on failure or interruption),
  run_name, run_dir, command (argv), overrides, config (the composed config, resolved),
  metrics {split: {metric: value}}, params {total, backbone, trainable, saved, trainable_pct, saved_pct,
  per_delta}, data {eval split: {examples, truncated_sources}}, train_data {split, examples, truncated_sources,
  truncated_targets | unlabelled (head runs: ReCoRD queries without a gold candidate, skipped in training)}
  (its own key: a train split that is also evaluated keeps both counts), backbone (source, init, revision, counts),
  eval_merged (LoRA folded into the weights for evaluation), timings {startup_s (process start -> run,
  peftrun/timing.py), setup_s (run -> model ready), train_data_s, to_first_step_s (process start -> first step),
  train_s, train_tokens_per_s, generate_s, generated_tokens_per_s, eval_s, eval_examples_per_s, flops_params
  (non-embedding N), train_model_flops_per_s (6 N tokens / train_s), generate_model_flops_per_s (2 N (prompt +
  generated tokens) / generate_s), finish_s (last prediction -> final record), total_s (process start, or a later sweep job's start, -> final
  record)}, threads {threads, available, reason} (peftrun/threads.py), train {steps, final_loss, train_loss (mean over all steps),
  tokens, resumed_from (checkpoint or null)}, peak_memory_mb, seed,
  versions {python, torch, transformers, peftrun, ...}, git {commit, dirty}, host, started, finished.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from peftrun.errors import PeftrunError, first_line
from peftrun.io import atomic_write_text

SCHEMA_VERSION = 1
RECORD_NAME = "results.json"


def write_record(run_dir: str | Path, record: dict[str, Any]) -> Path:
    path = Path(run_dir) / RECORD_NAME
    atomic_write_text(path, json.dumps(record, indent=2, sort_keys=False, default=str) + "\n")
    return path


def read_record(run_dir: str | Path) -> dict[str, Any] | None:
    """The run record in `run_dir`, None when there is none; a corrupt one is a PeftrunError naming the file."""
    path = Path(run_dir) / RECORD_NAME
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise PeftrunError(f"{path} is not a readable run record ({first_line(err)}); move it away (or choose "
                           "another hydra.run.dir) to start this run afresh") from err
    if not isinstance(record, dict):
        raise PeftrunError(f"{path} is not a run record (not a JSON object); move it away to start afresh")
    return record


def write_predictions(path: str | Path, rows: Iterable[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def versions() -> dict[str, str]:
    """Versions of the interpreter and the libraries that decide a run's numbers."""
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for name in ("peftrun", "torch", "transformers", "tokenizers", "hydra-core", "sacrebleu", "rouge-score",
                 "datasets", "accelerate", "safetensors"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


def git_state(start: str | Path | None = None) -> dict[str, Any]:
    """Commit and dirtiness of the source tree peftrun runs from (None outside a git checkout)."""
    root = Path(start or Path(__file__).resolve().parent)
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        if commit.returncode != 0:
            return {"commit": None, "dirty": None}
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5)
        return {"commit": commit.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.TimeoutExpired):
        return {"commit": None, "dirty": None}


def base_record(run_dir: str | Path, config: dict[str, Any], overrides: list[str], seed: int) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "status": "running",
        "run_name": config.get("run_name"),
        "run_dir": str(Path(run_dir).resolve()),
        "command": sys.argv,
        "overrides": overrides,
        "config": config,
        "metrics": {},
        "params": {},
        "data": {},
        "timings": {},
        "train": {},
        "peak_memory_mb": None,
        "seed": seed,
        "versions": versions(),
        "git": git_state(),
        "host": platform.node(),
    }
