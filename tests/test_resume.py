"""Kill and resume: a run stopped by SIGTERM or SIGKILL ends, when run again, exactly as an uninterrupted one.

All runs: tiny GPT-2 (128 wide) + LoRA, 60 steps over 40 training examples (5 steps per epoch, so the
interruptions fall inside a later epoch and the resumed Trainer skips the batches its checkpoint consumed),
a checkpoint every 7 steps, the same seed. Equality is checked on every step's logged loss (1e-6 absolute),
the final LoRA weights (rtol 1e-5, atol 1e-7), the eval metrics and the train summary (exact). Measured: all
bit-identical on CPU (optimizer, scheduler and RNG states are restored; the length-grouped order depends only
on seed and epoch).
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
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from tests.conftest import ROOT

ARGS = ["trainer.max_steps=60", "trainer.save_every=7", "trainer.logging_steps=1", "trainer.batch_size=8",
        "task.max_train_examples=40", "task.max_eval_examples=4", "task.generation.max_new_tokens=8",
        "method.dropout=0", "logger=none", "+backbone.tiny.n_embd=128"]


def _command(run_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "peftrun", *ARGS, *extra, f"hydra.run.dir={run_dir}"]


def _env() -> dict[str, str]:
    return dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", COLUMNS="1000")  # no wrapped paths


def _run(run_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(_command(run_dir, *extra), cwd=ROOT, env=_env(), capture_output=True, text=True,
                          timeout=300)


def _logged_steps(run_dir: Path) -> list[int]:
    path = run_dir / "train_log.jsonl"
    if not path.exists():
        return []
    return [json.loads(line)["step"] for line in path.read_text().splitlines(keepends=True) if line.endswith("\n")]


def _start_and_signal(run_dir: Path, sig: int, ready) -> tuple[int, str]:
    """Start the run, send `sig` once ready(run_dir) holds; (exit code, stderr)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    out_path, err_path = run_dir.parent / "interrupted.out", run_dir.parent / "interrupted.err"
    with open(out_path, "w") as out, open(err_path, "w") as err:
        proc = subprocess.Popen(_command(run_dir), cwd=ROOT, env=_env(), stdout=out, stderr=err)
        deadline = time.monotonic() + 240
        while not ready(run_dir):
            assert proc.poll() is None, "the run ended before it could be interrupted"
            assert time.monotonic() < deadline, "timed out waiting for the run to get there"
            time.sleep(0.01)
        proc.send_signal(sig)
        code = proc.wait(timeout=120)
    return code, err_path.read_text()


def _losses(run_dir: Path) -> list[tuple[int, float]]:
    lines = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    return [(entry["step"], entry["loss"]) for entry in lines if "loss" in entry]


def _assert_same_result(run_dir: Path, reference: Path) -> None:
    record, expected = (json.loads((d / "results.json").read_text()) for d in (run_dir, reference))
    assert record["status"] == expected["status"] == "complete"
    assert record["metrics"] == expected["metrics"]
    assert {k: v for k, v in record["train"].items() if k != "resumed_from"} == \
           {k: v for k, v in expected["train"].items() if k != "resumed_from"}
    losses, reference_losses = _losses(run_dir), _losses(reference)
    assert [s for s, _ in losses] == [s for s, _ in reference_losses] == list(range(1, 61))  # each step once
    for (step, a), (_, b) in zip(losses, reference_losses, strict=True):
        assert abs(a - b) <= 1e-6, f"step {step}: resumed {a}, uninterrupted {b}"
    weights, expected_weights = (load_file(d / "adapter" / "adapter_model.safetensors") for d in (run_dir, reference))
    assert set(weights) == set(expected_weights)
    for name, tensor in expected_weights.items():
        torch.testing.assert_close(weights[name], tensor, rtol=1e-5, atol=1e-7)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted run."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    proc = _run(run_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((run_dir / "results.json").read_text())["train"]["resumed_from"] is None
    return run_dir


def test_sigterm_then_sigkill_then_resume_ends_like_an_uninterrupted_run(reference: Path, tmp_path: Path) -> None:
    """Preempted twice: SIGTERM (checkpoint saved at the stop step), then SIGKILL (no chance to save: the
    newest periodic checkpoint is used), then the run completes."""
    run_dir = tmp_path / "run"
    checkpoints = run_dir / "checkpoints"

    # 1. SIGTERM once training is under way: checkpoint at the current step, status interrupted, exit 143
    code, stderr = _start_and_signal(run_dir, signal.SIGTERM, lambda d: max(_logged_steps(d), default=0) >= 10)
    assert code == 128 + signal.SIGTERM, stderr[-3000:]
    last = [line for line in stderr.splitlines() if line.strip()][-1]
    assert last.startswith("interrupted: stopped by signal 15 at step ") and "run the same command again" in last
    stopped_at = int(last.split(" at step ")[1].split(";")[0])
    assert 10 <= stopped_at < 50
    record = json.loads((run_dir / "results.json").read_text())
    assert record["status"] == "interrupted" and f"at step {stopped_at}" in record["error"]
    assert (checkpoints / f"checkpoint-{stopped_at}" / "trainer_state.json").exists()

    # 2. the same command resumes from that checkpoint; SIGKILL it 2 steps after its next periodic checkpoint
    periodic = (stopped_at // 7 + 1) * 7

    def past_periodic(d: Path) -> bool:
        saved = (checkpoints / f"checkpoint-{periodic}" / "trainer_state.json").exists()
        return saved and max(_logged_steps(d), default=0) >= periodic + 2

    code, _ = _start_and_signal(run_dir, signal.SIGKILL, past_periodic)
    assert code == -signal.SIGKILL
    assert f"resuming from {checkpoints / f'checkpoint-{stopped_at}'}" in (tmp_path / "interrupted.out").read_text()
    assert json.loads((run_dir / "results.json").read_text())["status"] == "running"  # no chance to say more

    # 3. trainer.resume=true (the explicit form of the same command) continues from the newest periodic checkpoint
    proc = _run(run_dir, "trainer.resume=true")
    assert proc.returncode == 0, proc.stderr[-3000:]
    resumed = json.loads((run_dir / "results.json").read_text())["train"]["resumed_from"]
    assert resumed is not None and f"resuming from {resumed}" in proc.stdout
    step = int(resumed.rsplit("-", 1)[1])
    assert step >= periodic and step % 7 == 0  # checkpoint-<periodic>, or a later one if the kill came late
    _assert_same_result(run_dir, reference)  # the steps redone after the checkpoint are logged once


def test_rerunning_a_complete_run_skips_it(reference: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "copy"
    shutil.copytree(reference, run_dir)
    before = {p.relative_to(run_dir): p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    proc = _run(run_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "already complete with this config; skipping" in proc.stdout
    # Hydra rewrites .hydra/ and peftrun.log on every invocation; the lock file names its latest holder
    rewritten = ("peftrun.log", ".peftrun.lock")
    after = {p.relative_to(run_dir): p.read_bytes() for p in run_dir.rglob("*") if p.is_file()
             if ".hydra" not in p.parts and p.name not in rewritten}
    assert after == {k: v for k, v in before.items() if ".hydra" not in k.parts and k.name not in rewritten}


# ---- in-process: checkpoint selection, sampler order, a changed config -----------------------------------------


def test_last_checkpoint_skips_folders_cut_mid_write_or_corrupt(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from peftrun.train import TRAINABLE_WEIGHTS, last_checkpoint, usable_checkpoint

    assert last_checkpoint(str(tmp_path / "none")) is None
    for step, state in ((7, '{"global_step": 7}'), (14, '{"global_step": 14, "log_hi'), (21, None),
                        (35, '{"global_step": 35}'), (42, '{"global_step": 42}')):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        save_file({"w": torch.ones(2)}, str(folder / TRAINABLE_WEIGHTS))
        torch.save({"state": {}, "param_groups": []}, folder / "optimizer.pt")
        if state is not None:
            (folder / "trainer_state.json").write_text(state)
    (tmp_path / "checkpoint-28").mkdir()  # killed before its weights
    (tmp_path / "checkpoint-28" / "trainer_state.json").write_text('{"global_step": 28}')
    (tmp_path / "checkpoint-35" / TRAINABLE_WEIGHTS).write_bytes(b"\x00" * 40)  # garbled weights
    (tmp_path / "checkpoint-42" / "optimizer.pt").write_bytes(b"PK\x03\x04 truncated")  # garbled optimizer
    found, skipped = usable_checkpoint(str(tmp_path))
    assert found == str(tmp_path / "checkpoint-7")
    assert [Path(folder).name for folder, _ in skipped] == [f"checkpoint-{s}" for s in (42, 35, 28, 21, 14)]
    assert "optimizer.pt unreadable" in skipped[0][1] and f"{TRAINABLE_WEIGHTS} unreadable" in skipped[1][1]


def test_length_grouped_order_depends_only_on_seed_epoch_and_global_batch() -> None:
    from peftrun.train import SeededLengthGroupedSampler

    lengths = [(i * 37) % 23 + 1 for i in range(200)]
    sampler = SeededLengthGroupedSampler(8, lengths, seed=3)
    first = list(sampler)
    torch.manual_seed(12345)  # the global RNG (dropout, init) must not matter
    assert list(SeededLengthGroupedSampler(8, lengths, seed=3)) == first
    assert sorted(first) == list(range(200))
    sampler.set_epoch(1)
    second = list(sampler)
    assert second != first and sorted(second) == list(range(200))
    sampler.set_epoch(0)
    assert list(sampler) == first  # a resumed epoch replays its order
    assert list(SeededLengthGroupedSampler(8, lengths, seed=4)) != first
    batches = [first[i:i + 8] for i in range(0, 200, 8)]  # length-grouped: a batch spans few lengths
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches) / len(batches)
    assert spread < 8


def test_checkpoints_of_another_config_are_refused_but_paths_and_logger_may_change(tmp_path: Path) -> None:
    from hydra import compose, initialize_config_dir
    from rich.console import Console

    from peftrun.cli import CONF_DIR
    from peftrun.errors import PeftrunError
    from peftrun.experiment import run_experiment
    from peftrun.records import write_record

    common = ["trainer.dry_run=true", "trainer.lr=1e-3"]
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=[*common, "logger=none"])
        other_lr = compose(config_name="config", overrides=["trainer.dry_run=true", "trainer.lr=2e-3"])
        other_node = compose(config_name="config", overrides=[*common, f"paths.cache_dir={tmp_path}/elsewhere",
                                                              "trainer.resume=true"])
    (tmp_path / "checkpoints" / "checkpoint-5").mkdir(parents=True)
    write_record(tmp_path, {"status": "interrupted", "config": OmegaConf.to_container(other_lr, resolve=True)})
    with pytest.raises(PeftrunError, match=r"different config \(trainer\.lr\)"):
        run_experiment(cfg, tmp_path, [], Console(quiet=True))
    write_record(tmp_path, {"status": "interrupted", "config": OmegaConf.to_container(other_node, resolve=True)})
    assert run_experiment(cfg, tmp_path, [], Console(quiet=True))["status"] == "dry_run"  # the same run
