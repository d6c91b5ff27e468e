"""trainer.precision: checked at start-up; bf16 trains and evaluates on CPU with float32 master weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from peftrun.errors import PeftrunError
from peftrun.precision import BF16_MIN_HIDDEN, check_precision, choose_precision, cpu_has_bf16, eval_autocast
from tests.test_cli import FAST, peftrun


def test_bad_precision_is_refused() -> None:
    with pytest.raises(PeftrunError, match="allowed: auto, fp32, bf16, fp16"):
        check_precision("bf32")
    with pytest.raises(PeftrunError, match="fp16 needs a GPU"):
        check_precision("fp16", cuda=False)
    check_precision("fp16", cuda=True)
    check_precision("bf16", cuda=False)


def test_eval_autocast_runs_matmuls_in_bfloat16() -> None:
    a = torch.randn(4, 4)
    with eval_autocast("bf16", "cpu"):
        assert (a @ a).dtype == torch.bfloat16
    with eval_autocast("fp32", "cpu"):
        assert (a @ a).dtype == torch.float32


def test_bf16_run_keeps_float32_trainable_weights(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = peftrun(*FAST, "task.max_train_examples=32", "logger=none", "trainer.precision=bf16",
                   f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((run_dir / "results.json").read_text())
    assert record["status"] == "complete" and record["train"]["final_loss"] > 0
    assert record["data"]["validation"]["generated_tokens"] > 0
    weights = load_file(run_dir / "adapter" / "adapter_model.safetensors")
    assert weights and all(t.dtype == torch.float32 for t in weights.values())


def test_fp16_on_cpu_fails_before_work(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: fp16 is allowed")
    proc = peftrun("trainer.precision=fp16", f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 2 and "error: trainer.precision=fp16 needs a GPU" in proc.stderr


def test_auto_chooses_bf16_only_where_it_was_measured_to_pay(tmp_path: Path) -> None:
    wide, narrow = BF16_MIN_HIDDEN, BF16_MIN_HIDDEN - 1
    assert choose_precision("auto", wide, cuda=False, cpu_bf16=True)["precision"] == "bf16"
    assert choose_precision("auto", narrow, cuda=False, cpu_bf16=True)["precision"] == "fp32"  # tiny: no gain
    assert choose_precision("auto", wide, cuda=False, cpu_bf16=False)["precision"] == "fp32"  # emulated bf16
    assert choose_precision("auto", None, cuda=False, cpu_bf16=True)["precision"] == "fp32"
    assert choose_precision("auto", 64, cuda=True, cuda_bf16=True)["precision"] == "bf16"
    assert choose_precision("auto", 4096, cuda=True, cuda_bf16=False)["precision"] == "fp32"
    assert choose_precision("fp32", wide, cuda=False, cpu_bf16=True) == {
        "precision": "fp32", "requested": "fp32", "reason": "trainer.precision"}
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor : 0\nflags\t\t: fpu avx512f avx512_bf16 amx_tile\n")
    assert cpu_has_bf16(str(cpuinfo))
    cpuinfo.write_text("processor : 0\nflags\t\t: fpu avx2 avx512f\n")
    assert not cpu_has_bf16(str(cpuinfo)) and not cpu_has_bf16(str(tmp_path / "absent"))


def test_auto_on_a_tiny_model_trains_fp32_and_records_why(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = peftrun(*FAST, "trainer.precision=auto", "logger=none", f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((run_dir / "results.json").read_text())
    assert record["precision"] == {"precision": "fp32", "requested": "auto", "reason": f"hidden 64 < {BF16_MIN_HIDDEN}"}
    assert record["config"]["trainer"]["precision"] == "auto"  # the config as asked; the choice beside it
