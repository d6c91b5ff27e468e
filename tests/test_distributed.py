"""`torchrun --nproc_per_node=2 -m peftrun` (DDP over gloo on CPU) trains what one process trains, and survives
a SIGTERM: the ranks stop at one step, save one checkpoint, and the same command resumes to the same result.

Two processes with trainer.batch_size=2 against one process with trainer.batch_size=4: the same global batch.
What makes the two runs comparable, step for step:
  - the data order. peftrun's length-grouped sampler (train.py::SeededLengthGroupedSampler) builds its
    megabatches for the *global* batch and draws its permutation from a generator seeded with seed + epoch
    (the epoch taken from the trainer state, so also right after a resume), so every rank draws the same order
    and accelerate hands the consecutive per-device halves of each global batch to ranks 0 and 1: the 4
    examples of step k are the same in both runs;
  - no dropout: method.dropout=0 and the tiny GPT-2's own dropouts at 0 (each rank draws its own masks);
  - the loss: summed token cross-entropy over the tokens of all ranks (num_items_in_batch is gathered) times
    the number of processes, because DDP averages gradients over processes; the logged loss is the mean
    over ranks, i.e. the global token mean, as in the one-process run.
The DDP run is stopped by SIGTERM (sent to torchrun, which forwards it) once its log shows step 12, i.e. in
the second epoch (10 steps an epoch), and resumed by the same command.
Tolerance: 1e-5 absolute on each step's loss (measured: < 1e-6; float sums in a different order and padding
to a different width), rtol/atol 1e-5 on the final LoRA weights.

Also checked: one results.json, written by rank 0 (its run_dir), one train_log.jsonl line per step, and
rank 0 alone generates and scores every evaluation example.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import ROOT

STEPS = 30
EVAL_EXAMPLES = 6
COMMON = [
    f"trainer.max_steps={STEPS}", "trainer.logging_steps=1", "trainer.save_every=7", "task.max_train_examples=40",
    f"task.max_eval_examples={EVAL_EXAMPLES}", "task.generation.max_new_tokens=8", "logger=none",
    "+backbone.tiny.n_embd=128", "method.dropout=0",
    "+backbone.tiny.resid_pdrop=0", "+backbone.tiny.embd_pdrop=0", "+backbone.tiny.attn_pdrop=0",
]
TORCHRUN = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]

pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="torch.distributed with the gloo backend is not available")


def _command(launcher: list[str], *args: str) -> list[str]:
    return [sys.executable, *launcher, "-m", "peftrun", *args]


def _env() -> dict[str, str]:
    return dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", COLUMNS="1000")


def _logged_steps(run_dir: Path) -> list[int]:
    path = run_dir / "train_log.jsonl"
    if not path.exists():
        return []
    return [json.loads(line)["step"] for line in path.read_text().splitlines(keepends=True) if line.endswith("\n")]


def _losses(run_dir: Path) -> list[tuple[int, float]]:
    lines = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    return [(entry["step"], entry["loss"]) for entry in lines if "loss" in entry]


def _sigterm_at_step(command: list[str], run_dir: Path, step: int) -> None:
    with open(run_dir.parent / "ddp.out", "w") as out, open(run_dir.parent / "ddp.err", "w") as err:
        proc = subprocess.Popen(command, cwd=ROOT, env=_env(), stdout=out, stderr=err)
        deadline = time.monotonic() + 240
        while max(_logged_steps(run_dir), default=0) < step:
            assert proc.poll() is None, "the DDP run ended before it could be interrupted"
            assert time.monotonic() < deadline, "timed out waiting for the DDP run"
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)  # torchrun itself exits 1 with its SignalException; the ranks exit 143


def test_two_process_ddp_matches_one_process_and_resumes_after_sigterm(tmp_path: Path) -> None:
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    proc = subprocess.run(_command([], *COMMON, "trainer.batch_size=4", f"hydra.run.dir={single}"), cwd=ROOT,
                          env=_env(), capture_output=True, text=True, timeout=300)  # first: warms the tokenizer cache
    assert proc.returncode == 0, proc.stderr[-3000:]

    command = _command(TORCHRUN, *COMMON, "trainer.batch_size=2", f"hydra.run.dir={ddp}")
    _sigterm_at_step(command, ddp, 12)
    record = json.loads((ddp / "results.json").read_text())
    assert record["status"] == "interrupted", (tmp_path / "ddp.err").read_text()[-3000:]
    stopped_at = int(record["error"].split(" at step ")[1].split(";")[0])
    checkpoint = ddp / "checkpoints" / f"checkpoint-{stopped_at}"
    assert {"rng_state_0.pth", "rng_state_1.pth", "trainer_state.json"} <= {p.name for p in checkpoint.iterdir()}
    err = (tmp_path / "ddp.err").read_text()
    assert err.count("interrupted: stopped by signal 15") == 1  # rank 0 speaks for both

    proc = subprocess.run(command, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"resuming from {checkpoint}" in proc.stdout

    one, two = _losses(single), _losses(ddp)
    assert [step for step, _ in one] == list(range(1, STEPS + 1))
    assert [step for step, _ in two] == list(range(1, STEPS + 1))  # rank 0 alone writes the log: no duplicates
    for (step, a), (_, b) in zip(one, two, strict=True):
        assert abs(a - b) <= 1e-5, f"step {step}: 1 process {a}, 2 processes {b}"
    assert len({round(loss, 3) for _, loss in one}) > 1  # the steps saw different batches

    assert set(tmp_path.rglob("results.json")) == {single / "results.json", ddp / "results.json"}
    record, reference = (json.loads((d / "results.json").read_text()) for d in (ddp, single))
    assert record["status"] == "complete" and record["run_dir"] == str(ddp.resolve())
    assert record["train"]["steps"] == STEPS and record["train"]["resumed_from"] == str(checkpoint)
    assert record["train"]["tokens"] == reference["train"]["tokens"]  # counted over both ranks and both sessions
    assert record["metrics"] == reference["metrics"]
    predictions = (ddp / "predictions.jsonl").read_text().splitlines()
    assert len(predictions) == EVAL_EXAMPLES  # rank 0 evaluated every example, once

    weights, expected = (load_file(d / "adapter" / "adapter_model.safetensors") for d in (ddp, single))
    assert set(weights) == set(expected)
    for name in expected:
        torch.testing.assert_close(weights[name], expected[name], rtol=1e-5, atol=1e-5)
