"""The run record (results.json) and predictions.jsonl, written atomically.

results.json schema (version 1):
  schema_version, status ("running" | "complete" | "dry_run" | "failed" | "interrupted": SIGTERM/SIGINT, checkpoint
  saved, the same command resumes), error (on failure or interruption),
  run_name, run_dir, command (argv), overrides, config (the composed config, resolved),
  metrics {split: {metric: value}}, params {total, backbone, trainable, saved, trainable_pct, saved_pct,
  per_delta}, data {split: {examples, truncated_sources, truncated_targets, unlabelled (head runs: ReCoRD
  queries without a gold candidate, skipped in training)}}, backbone (source, init, revision, counts),
  eval_merged (LoRA folded into the weights for evaluation), timings {startup_s (process start -> run,
  peftrun/timing.py), setup_s (run -> model ready), train_data_s, to_first_step_s (process start -> first step),
  train_s, train_tokens_per_s, generate_s, generated_tokens_per_s, eval_s, eval_examples_per_s, flops_params
  (non-embedding N), train_model_flops_per_s (6 N tokens / train_s), generate_model_flops_per_s (2 N (prompt +
  generated tokens) / generate_s), finish_s (last prediction -> final record), total_s (process start -> final
  record)}, threads {threads, available, reason} (peftrun/threads.py), train {steps, final_loss, train_loss (mean over all steps),
  tokens, resumed_from (checkpoint or null)}, peak_memory_mb, seed,
  versions {python, torch, transformers, peftrun, ...}, git {commit, dirty}, host, started, finished.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
RECORD_NAME = "results.json"


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write via a temp file in the same folder + os.replace: readers never see a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_record(run_dir: str | Path, record: dict[str, Any]) -> Path:
    path = Path(run_dir) / RECORD_NAME
    atomic_write_text(path, json.dumps(record, indent=2, sort_keys=False, default=str) + "\n")
    return path


def read_record(run_dir: str | Path) -> dict[str, Any] | None:
    path = Path(run_dir) / RECORD_NAME
    if not path.exists():
        return None
    return json.loads(path.read_text())


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
