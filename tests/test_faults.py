"""Fault injection and bad input: whatever happens to a run, its record never lies and a rerun finishes the job.

Subprocess runs of the `peftrun` command on tiny GPT-2 + LoRA (6 steps, a checkpoint every 2 steps, 24 eval
examples generated one per batch so evaluation lasts long enough to be interrupted). Every interrupted run is rerun
with the same command and must end exactly as the uninterrupted reference: metrics, train summary, adapter bytes.
Kill/resume inside training is tests/test_resume.py's; config values are checked in-process (fast) here.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from tests.conftest import ROOT

ARGS = ["trainer.max_steps=6", "trainer.save_every=2", "trainer.logging_steps=1", "trainer.batch_size=4",
        "task.max_train_examples=16", "task.max_eval_examples=24", "task.generation.max_new_tokens=16",
        "task.generation.batch_size=1", "method.dropout=0", "logger=none"]


def _command(run_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "peftrun", *ARGS, *extra, f"hydra.run.dir={run_dir}"]


def _env() -> dict[str, str]:
    return dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", COLUMNS="1000")


def _run(run_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(_command(run_dir, *extra), cwd=ROOT, env=_env(), capture_output=True, text=True,
                          timeout=300)


def _record(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def _signal_when(run_dir: Path, sig: int, ready) -> tuple[int, str]:
    """Start the run, send `sig` as soon as ready(run_dir) holds; (exit code, stderr)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir.parent / "out.txt", "w") as out, open(run_dir.parent / "err.txt", "w") as err:
        proc = subprocess.Popen(_command(run_dir), cwd=ROOT, env=_env(), stdout=out, stderr=err)
        deadline = time.monotonic() + 240
        while not ready(run_dir):
            assert proc.poll() is None, "the run ended before it could be interrupted"
            assert time.monotonic() < deadline, "timed out waiting for the run to get there"
            time.sleep(0.005)
        proc.send_signal(sig)
        code = proc.wait(timeout=120)
    return code, (run_dir.parent / "err.txt").read_text()


def _assert_same_result(run_dir: Path, reference: Path) -> None:
    record, expected = _record(run_dir), _record(reference)
    assert record["status"] == expected["status"] == "complete"
    assert record["metrics"] == expected["metrics"]
    assert {k: v for k, v in record["train"].items() if k != "resumed_from"} == \
           {k: v for k, v in expected["train"].items() if k != "resumed_from"}
    assert record["train"]["steps"] == 6  # never a step beyond max_steps
    weights = "adapter/adapter_model.safetensors"
    assert (run_dir / weights).read_bytes() == (reference / weights).read_bytes()
    assert (run_dir / "predictions.jsonl").read_text() == (reference / "predictions.jsonl").read_text()


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    proc = _run(run_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["checkpoint-4", "checkpoint-6"]
    return run_dir


def test_sigterm_during_setup_is_recorded_interrupted_and_a_rerun_completes(reference: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    code, stderr = _signal_when(run_dir, signal.SIGTERM, lambda d: (d / "results.json").exists())
    assert code == 128 + signal.SIGTERM, stderr[-3000:]
    assert stderr.strip().splitlines()[-1].startswith("interrupted: stopped by signal 15 during set-up")
    assert _record(run_dir)["status"] == "interrupted"
    proc = _run(run_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _assert_same_result(run_dir, reference)


def test_kills_between_training_and_evaluation_and_during_it_resume_into_evaluation(reference: Path,
                                                                                     tmp_path: Path) -> None:
    """SIGKILL once the adapter is saved (training done), then SIGTERM during the rerun's evaluation: each rerun
    starts from the checkpoint at the last step and goes straight to evaluation (no step beyond max_steps)."""
    run_dir = tmp_path / "run"
    code, _ = _signal_when(run_dir, signal.SIGKILL, lambda d: (d / "adapter").exists())
    assert code == -signal.SIGKILL
    assert _record(run_dir)["status"] == "running"  # no chance to say more; the lock died with the process

    def evaluating(d: Path) -> bool:
        return "training finished at step 6" in (d.parent / "out.txt").read_text()

    code, stderr = _signal_when(run_dir, signal.SIGTERM, evaluating)
    assert code == 128 + signal.SIGTERM, stderr[-3000:]
    record = _record(run_dir)
    assert record["status"] == "interrupted" and "during evaluation" in record["error"]
    proc = _run(run_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "training finished at step 6" in proc.stdout
    assert _record(run_dir)["train"]["resumed_from"].endswith("checkpoint-6")
    _assert_same_result(run_dir, reference)


def test_corrupt_newest_checkpoint_falls_back_to_the_previous_one(reference: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(reference, run_dir)
    shutil.rmtree(run_dir / "adapter")
    (run_dir / "predictions.jsonl").unlink()
    record = _record(run_dir)
    record["status"] = "running"  # as after a kill
    (run_dir / "results.json").write_text(json.dumps(record))
    (run_dir / "checkpoints" / "checkpoint-6" / "optimizer.pt").write_bytes(b"garbage")
    proc = _run(run_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"skipping {run_dir / 'checkpoints' / 'checkpoint-6'}: optimizer.pt unreadable" in proc.stdout
    assert _record(run_dir)["train"]["resumed_from"].endswith("checkpoint-4")
    _assert_same_result(run_dir, reference)


def test_a_complete_run_is_not_overwritten_by_another_config(reference: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(reference, run_dir)
    kept = ("results.json", "predictions.jsonl", "adapter/adapter_model.safetensors")
    before = {name: (run_dir / name).read_bytes() for name in kept}
    proc = _run(run_dir, "trainer.lr=1e-3")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: {run_dir} holds a complete run of a different config (trainer.lr); choose another hydra.run.dir, "
        f"or delete {run_dir} to replace it"]
    assert {name: (run_dir / name).read_bytes() for name in kept} == before


def test_a_second_run_in_a_busy_directory_fails_and_a_dead_owner_does_not_block(tmp_path: Path) -> None:
    from peftrun.rundir import LOCK_NAME, claim

    run_dir = tmp_path / "run"
    with claim(run_dir):  # this process is the live owner
        proc = _run(run_dir, "trainer.dry_run=true")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {run_dir} is in use by another peftrun run (pid "
                                                   f"{os.getpid()} on ")
    assert not (run_dir / "results.json").exists()
    (run_dir / LOCK_NAME).write_text("pid 999999 on a-dead-node\n")  # left by a process that was killed
    proc = _run(run_dir, "trainer.dry_run=true")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _record(run_dir)["status"] == "dry_run"


def test_a_diverged_run_is_failed_not_complete(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = _run(run_dir, "trainer.lr=1e30", "trainer.max_grad_norm=0", "trainer.save_every=0")
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("error: training diverged: "), line
    record = _record(run_dir)
    assert record["status"] == "failed" and "training diverged" in record["error"]
    assert not (run_dir / "predictions.jsonl").exists()


def test_train_split_evaluated_too_keeps_its_training_counts(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = _run(run_dir, "task.eval_splits=[train]", "task.max_eval_examples=2", "trainer.save_every=0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = _record(run_dir)
    assert record["train_data"]["split"] == "train" and record["train_data"]["examples"] == 16
    assert record["data"]["train"]["examples"] == 2


# ---- in-process: values, names and unknown keys fail before any work, one line naming the key -----------------


def _compose(*overrides: str):
    from peftrun.cli import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


BAD_VALUES = [
    ("trainer.lr=-1", "trainer.lr"), ("trainer.lr=nan", "trainer.lr"), ("trainer.lr=inf", "trainer.lr"),
    ("trainer.batch_size=0", "trainer.batch_size"),
    ("trainer.grad_accum=-2", "trainer.grad_accum"), ("trainer.logging_steps=0", "trainer.logging_steps"),
    ("trainer.label_smoothing=1.5", "trainer.label_smoothing"), ("trainer.label_smoothing=1", "trainer.label_smoothing"),
    ("trainer.scheduler=nosuch", "trainer.scheduler"), ("trainer.precision=fp8", "trainer.precision"),
    ("trainer.max_steps=0", "trainer.do_train=false"), ("trainer.max_steps=-5", "trainer.max_steps"),
    ("trainer.epochs=0", "trainer.epochs"), ("trainer.warmup_ratio=1.5", "trainer.warmup_ratio"),
    ("trainer.save_every=-1", "trainer.save_every"), ("trainer.eval_every=5", "trainer.select_metric"),
    ("task.generation.num_beams=0", "task.generation.num_beams"),
    ("task.mixture.eval_shots=2", "task.mixture.eval_shots is set but task=synthetic"),  # read by task=mixture only
    ("task.mixture.train=[cb]", "add task=mixture"),
    ("task.generation.batch_size=0", "task.generation.batch_size"),
    ("task.generation.max_new_tokens=0", "task.generation.max_new_tokens"),
    ("task.generation.decoder=fast", "task.generation.decoder"),
    ("task.max_eval_examples=0", "task.max_eval_examples"), ("task.max_eval_examples=-1", "task.max_eval_examples"),
    ("task.max_train_examples=0", "task.max_train_examples"),
    ("task.max_source_length=0", "task.max_source_length"), ("task.metrics=[]", "task.metrics"),
    ("method.alpha=0", "method.alpha"), ("method.rank=0", "method.rank"), ("method.rank=65", "method.rank <= 64"),
    ("+foo=1", "'foo'"), ("+trainer.foo=1", "'trainer.foo'"),
]


@pytest.mark.parametrize(("override", "named"), BAD_VALUES)
def test_bad_values_fail_with_one_line_naming_the_key(override: str, named: str) -> None:
    from peftrun.errors import PeftrunError
    from peftrun.validation import validate_config

    with pytest.raises(PeftrunError) as caught:
        validate_config(_compose(override))
    message = str(caught.value)
    assert named in message and "\n" not in message


@pytest.mark.parametrize("override", ["method=scaled_parallel_adapter method.scale=0",
                                      "method=prompt_tuning method.length=100000", "method=prefix method.length=0"])
def test_no_op_or_absurd_method_values_are_refused(override: str) -> None:
    from peftrun.errors import PeftrunError
    from peftrun.validation import validate_config

    with pytest.raises(PeftrunError, match=override.split()[-1].split("=")[0].split(".")[-1]):
        validate_config(_compose(*override.split()))


@pytest.mark.parametrize("group", ["method", "task", "backbone", "experiment"])
def test_the_shipped_configs_pass_validation(group: str) -> None:
    from peftrun.cli import CONF_DIR
    from peftrun.validation import validate_config

    validate_config(_compose())
    for option in sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml")):
        validate_config(_compose(f"{group}={option}"))


def test_scheduler_names_are_transformers_own() -> None:
    from transformers.trainer_utils import SchedulerType

    from peftrun.validation import SCHEDULERS

    assert set(SCHEDULERS) <= {s.value for s in SchedulerType}


@pytest.mark.parametrize(("override", "known"), [("experiment=lora_e2e_gpt2", "lora_e2e_gpt2m"),
                                                 ("hparams_search=nosuch", "optuna")])
def test_misspelt_optional_group_fails_listing_the_options(override: str, known: str, tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "peftrun", override, f"hydra.run.dir={tmp_path}"], cwd=ROOT,
                          env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {override}: no such config") and known in lines[0]
    assert not (tmp_path / "results.json").exists()


def test_validation_imports_neither_torch_nor_transformers() -> None:
    code = ("import sys\n"
            "from hydra import compose, initialize_config_dir\n"
            "from peftrun.cli import CONF_DIR\n"
            "from peftrun.validation import validate_config\n"
            "with initialize_config_dir(config_dir=CONF_DIR, version_base='1.3'):\n"
            "    validate_config(compose(config_name='config'))\n"
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'imported'\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_env(), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_a_length_error_never_suggests_an_empty_source() -> None:
    from peftrun.errors import PeftrunError
    from peftrun.lengths import check_lengths

    task = _compose("task.max_source_length=10", "task.max_target_length=600").task
    with pytest.raises(PeftrunError) as caught:
        check_lengths(task, "decoder", "text", 512, "n_positions", "tiny-gpt2")
    assert "max_source_length=0" not in str(caught.value) and "shorten task.max_target_length" in str(caught.value)


# ---- checkpoint selection during training (trainer.eval_every) ----------------------------------------------------

SELECT = ["trainer.max_steps=12", "trainer.lr=1e-2", "trainer.eval_every=3", "trainer.select_metric=chrf",
          "task.max_train_examples=32", "task.max_eval_examples=8", "task.generation.batch_size=8",
          "trainer.save_every=0"]


def test_eval_every_selects_the_best_step_and_survives_an_interruption(tmp_path: Path) -> None:
    """The final evaluation uses the step with the best validation chrF (earliest among ties); a run stopped by
    SIGTERM mid-training and rerun selects the same step and ends with the same results."""
    reference = tmp_path / "reference"
    proc = _run(reference, *SELECT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = _record(reference)
    selection = record["train"]["selection"]
    steps = [step for step, _ in selection["evaluated"]]
    assert steps == [3, 6, 9, 12]
    best = max(value for _, value in selection["evaluated"])
    assert selection["selected_step"] == next(step for step, value in selection["evaluated"] if value == best)
    assert selection["selected_value"] == best == record["metrics"]["validation"]["chrf"]
    assert (reference / "checkpoints" / f"checkpoint-{selection['selected_step']}").is_dir()  # kept by rotation

    run_dir = tmp_path / "interrupted" / "run"
    run_dir.mkdir(parents=True)
    command = _command(run_dir, *SELECT)
    with open(run_dir.parent / "out.txt", "w") as out:
        proc = subprocess.Popen(command, cwd=ROOT, env=_env(), stdout=out, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 240
        while not (run_dir / "checkpoints" / "checkpoint-6" / "trainer_state.json").exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.005)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 128 + signal.SIGTERM
    proc = _run(run_dir, *SELECT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    resumed = _record(run_dir)
    assert resumed["train"]["resumed_from"] is not None
    assert resumed["train"]["selection"] == selection
    assert resumed["metrics"] == record["metrics"]
    weights = "adapter/adapter_model.safetensors"
    assert (run_dir / weights).read_bytes() == (reference / weights).read_bytes()


def test_select_metric_must_be_one_the_task_computes(tmp_path: Path) -> None:
    proc = _run(tmp_path / "run", *SELECT[:3], "trainer.select_metric=rouge1")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["error: trainer.select_metric='rouge1' is not a metric task "
                                                "'synthetic' computes here; known: bleu, chrf"]


def test_a_run_asked_to_train_needs_training_rows_and_eval_splits_need_rows() -> None:
    from peftrun.errors import PeftrunError
    from peftrun.experiment import _check_usable_rows

    cfg = _compose()
    with pytest.raises(PeftrunError, match="split 'train' has no usable training example"):
        _check_usable_rows(cfg, [], {"validation": [object()]})
    with pytest.raises(PeftrunError, match="eval split 'validation' has no usable example"):
        _check_usable_rows(cfg, [object()], {"validation": []})
    _check_usable_rows(_compose("trainer.do_train=false"), [], {"validation": [object()]})  # evaluation only
