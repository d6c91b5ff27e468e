"""Run-record timings: process-relative clock, non-embedding parameter count, model FLOP/s, and a real run's
timings covering the whole process (start-up, first step, training, generation, finish)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from peftrun.timing import PROCESS_STARTED, model_flops_per_s, non_embedding_params, since_start
from tests.test_cli import FAST, peftrun


def test_clock_starts_with_the_process() -> None:
    assert time.perf_counter() >= PROCESS_STARTED
    assert 0 < since_start() < 3600
    if sys.platform == "linux":  # the kernel start time precedes this test's imports
        assert since_start() > 0.05


def test_non_embedding_params_and_flops() -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=100, n_positions=16))
    total = sum(p.numel() for p in model.parameters())  # the tied LM head is counted once, with wte
    embeddings = model.transformer.wte.weight.numel() + model.transformer.wpe.weight.numel()
    assert non_embedding_params(model) == total - embeddings
    assert model_flops_per_s(10, 3, 2.0, 6) == 90.0


def test_record_timings_cover_the_run(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    started = time.perf_counter()
    proc = peftrun(*FAST, "task.max_train_examples=32", "logger=none", f"hydra.run.dir={run_dir}")
    wall = time.perf_counter() - started
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((run_dir / "results.json").read_text())
    t = record["timings"]
    assert 0 < t["startup_s"] < t["to_first_step_s"] < t["total_s"] <= wall
    assert t["startup_s"] + t["setup_s"] <= t["to_first_step_s"]
    phases = ("startup_s", "setup_s", "train_data_s", "train_s", "eval_s", "finish_s")  # consecutive, disjoint
    assert sum(t[key] for key in phases) <= t["total_s"] + 0.01
    assert t["to_first_step_s"] < t["total_s"] - t["eval_s"] - t["finish_s"]
    validation = record["data"]["validation"]
    assert validation["generated_tokens"] > 0 and validation["prompt_tokens"] > 0
    assert t["generated_tokens_per_s"] == round(validation["generated_tokens"] / t["generate_s"], 1)
    assert t["train_model_flops_per_s"] == round(6 * t["flops_params"] * record["train"]["tokens"] / t["train_s"])
    assert record["threads"]["threads"] >= 1


def test_each_sweep_job_times_itself_not_the_jobs_before_it(tmp_path: Path) -> None:
    """`-m` runs the jobs in one process: a later job's clock starts at that job, not at the process start."""
    sweep = tmp_path / "sweep"
    proc = peftrun("-m", *FAST, "task.max_train_examples=32", "logger=none", "trainer.seed=1,2,3",
                   f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = sorted(sweep.glob("*/results.json"))
    timings = [json.loads(path.read_text())["timings"] for path in records]
    assert len(timings) == 3
    first_job = timings[0]["total_s"]
    for t in timings[1:]:
        assert t["startup_s"] < 0.5 * timings[0]["startup_s"]  # no interpreter start, no imports
        assert t["total_s"] < first_job + 0.5 * first_job  # not the sum of the jobs so far
        assert t["startup_s"] + t["setup_s"] <= t["to_first_step_s"] < t["total_s"]
