"""The runner end to end, as a user runs it: subprocesses of the `peftrun` command on tiny backbones."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, require_data

FAST = ["trainer.max_steps=6", "trainer.batch_size=4", "task.max_eval_examples=6", "task.generation.max_new_tokens=8",
        "task.generation.num_beams=1"]


def entry_point(name: str) -> list[str]:
    """The installed console script (what users type), else `python -m` of its module."""
    script = Path(sys.executable).parent / name
    return [str(script)] if script.exists() else [sys.executable, "-m", name.replace("-", ".")]


def peftrun(*args: str, cwd: Path = ROOT, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run([*entry_point("peftrun"), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.mark.parametrize("backbone", ["tiny-gpt2", "tiny-bart", "tiny-t5"])
def test_lora_on_e2e_writes_a_complete_record(tmp_path: Path, backbone: str) -> None:
    e2e = require_data("e2e")
    run_dir = tmp_path / "run"
    proc = peftrun(f"backbone={backbone}", "method=lora", "task=e2e", f"task.data_dir={e2e}",
                   "task.max_train_examples=64", *FAST, f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = read_json(run_dir / "results.json")
    assert record["status"] == "complete"
    assert record["config"]["backbone"]["name"] == backbone
    assert record["train"]["steps"] == 6
    bleu = record["metrics"]["validation"]["bleu"]
    assert 0.0 <= bleu <= 100.0
    params = record["params"]
    assert 0 < params["trainable"] < params["backbone"]
    assert params["saved"] == params["trainable"]
    assert record["timings"]["train_s"] > 0 and record["versions"]["torch"]
    predictions = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 6 and {"id", "input", "prediction", "references"} <= set(predictions[0])
    assert (run_dir / "adapter" / "adapter_model.safetensors").exists()
    assert (run_dir / ".hydra" / "config.yaml").exists()


def test_sweep_writes_one_record_per_job(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    proc = peftrun("-m", "method=full,lora", *FAST, "task.max_train_examples=32", f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = sorted(sweep.glob("*/results.json"))
    assert len(records) == 2
    by_method = {read_json(p)["config"]["method"]["name"]: read_json(p) for p in records}
    assert set(by_method) == {"full", "lora"}
    assert all(r["status"] == "complete" for r in by_method.values())
    # full fine-tuning trains every backbone parameter; LoRA a small fraction
    assert by_method["full"]["params"]["trainable"] == by_method["full"]["params"]["backbone"]
    assert by_method["lora"]["params"]["trainable"] < by_method["full"]["params"]["trainable"] / 10


@pytest.mark.parametrize(
    ("override", "named"),
    [("trainer.lrr=1", "lrr"), ("trainer.lr=fast", "lr"), ("backbone.sourze=x", "sourze"),
     ("method.rnak=4", "rnak"), ("method=nosuch", "lora"), ("trainer.lr=", "lr")],
)
def test_config_errors_name_the_bad_key(override: str, named: str, tmp_path: Path) -> None:
    """Hydra's composition errors too are one `error:` line, exit 2, no traceback."""
    proc = peftrun(override, f"hydra.run.dir={tmp_path}")
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert named in lines[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "results.json").exists()


def test_unknown_task_is_one_line_error(tmp_path: Path) -> None:
    proc = peftrun("task.name=nosuchtask", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: unknown task 'nosuchtask'") and "synthetic" in lines[-1]
    assert not (tmp_path / "results.json").exists()


def test_help_and_cfg_job_do_not_import_torch() -> None:
    code = ("import sys; sys.argv=['peftrun','--cfg','job']; import peftrun.cli as c\n"
            "try:\n    c.main()\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules, 'torch imported'\nprint('ok')")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "backbone:" in proc.stdout and "ok" in proc.stdout


def test_dry_run_records_accounting_without_training(tmp_path: Path) -> None:
    proc = peftrun("trainer.dry_run=true", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = read_json(tmp_path / "results.json")
    assert record["status"] == "dry_run" and record["metrics"] == {} and record["train"] == {}
    assert record["params"]["trainable"] > 0
    assert not (tmp_path / "predictions.jsonl").exists()
