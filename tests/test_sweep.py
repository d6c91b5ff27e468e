"""`peftrun -m` sweeps: a failing job is recorded as failed and the others run; a rerun skips complete jobs.

Injected failures, each seen by one job only:
  - trainer.lr=-1.0 passes config validation (a float) and fails at run time, inside the Trainer, with
    torch's `ValueError: Invalid learning rate` (a real exception, not a PeftrunError): the record written by
    run_experiment says failed with the error, the log names the job, the sweep goes on and exits 0;
  - task.name=nosuchtask fails validation with a PeftrunError before run_experiment writes a record: the CLI
    writes the failed record itself, so the sweep's report still lists the job.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from peftrun.report import build_report, find_records
from tests.conftest import ROOT

FAST = ["trainer.max_steps=4", "task.max_train_examples=32", "task.max_eval_examples=4",
        "task.generation.max_new_tokens=4", "logger=none"]


def _sweep(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", COLUMNS="1000")
    return subprocess.run([sys.executable, "-m", "peftrun", "-m", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


def _records(sweep: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(sweep.glob("*/results.json"))}


def test_a_failing_job_is_recorded_and_the_others_complete_then_a_rerun_skips_them(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    proc = _sweep("trainer.lr=5e-4,-1.0,1e-3", *FAST, f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    bad_lr = ("trainer.lr=-1.0 is not allowed: a finite number >= 0 (0 keeps the initial weights); set trainer.lr to "
              "such a value")
    assert f"job 1 failed: {bad_lr}" in proc.stdout  # refused before any work (peftrun/validation.py)
    records = _records(sweep)
    assert sorted(records) == ["0_tiny-gpt2-pretrained_lora_synthetic", "1_tiny-gpt2-pretrained_lora_synthetic", "2_tiny-gpt2-pretrained_lora_synthetic"]
    failed = records["1_tiny-gpt2-pretrained_lora_synthetic"]
    assert failed["status"] == "failed" and failed["error"] == f"PeftrunError: {bad_lr}"
    assert failed["config"]["trainer"]["lr"] == -1.0
    for name in ("0_tiny-gpt2-pretrained_lora_synthetic", "2_tiny-gpt2-pretrained_lora_synthetic"):  # job 2 ran after the failure
        assert records[name]["status"] == "complete" and records[name]["train"]["steps"] == 4
        assert set(records[name]["metrics"]["validation"]) == {"bleu", "chrf"}

    report = build_report(find_records(sweep))  # what peftrun-report tabulates
    assert [row.variant for row in report.rows] == ["trainer.lr=0.0005", "trainer.lr=0.001"]
    assert [(f.status, f.error) for f in report.failures] == [("failed", f"PeftrunError: {bad_lr}")]

    before = {name: (sweep / name / "results.json").read_bytes() for name in records}
    proc = _sweep("trainer.lr=5e-4,-1.0,1e-3", *FAST, f"hydra.sweep.dir={sweep}")  # an interrupted sweep, resumed
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("already complete with this config; skipping") == 2
    assert f"job 1 failed: {bad_lr}" in proc.stdout  # the failed job is tried again
    for name in ("0_tiny-gpt2-pretrained_lora_synthetic", "2_tiny-gpt2-pretrained_lora_synthetic"):
        assert (sweep / name / "results.json").read_bytes() == before[name]
    assert _records(sweep)["1_tiny-gpt2-pretrained_lora_synthetic"]["status"] == "failed"


def test_a_job_failing_validation_gets_a_failed_record(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    proc = _sweep("task.name=nosuchtask,synthetic", *FAST, f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "job 0 failed: unknown task 'nosuchtask'" in proc.stdout
    records = _records(sweep)
    bad, good = records["0_tiny-gpt2-pretrained_lora_nosuchtask"], records["1_tiny-gpt2-pretrained_lora_synthetic"]
    assert bad["status"] == "failed" and bad["error"].startswith("PeftrunError: unknown task 'nosuchtask'")
    assert bad["config"]["task"]["name"] == "nosuchtask" and bad["run_dir"] == str(sweep / "0_tiny-gpt2-pretrained_lora_nosuchtask")
    assert good["status"] == "complete"
    report = build_report(find_records(sweep))
    assert len(report.rows) == 1 and [f.task for f in report.failures] == ["nosuchtask"]
