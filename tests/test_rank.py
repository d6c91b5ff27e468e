"""Rank classification: the cached scoring equals one full forward per option; choice and calibration by hand;
method=icl end to end (evaluation only) on decoder and encoder-decoder; prompt errors in one line."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from peftrun.config import CONF_DIR, register_configs
from peftrun.formulations.options import choose, rechoose
from peftrun.formulations.rank import option_logprobs, option_logprobs_reference, option_scores
from tests.conftest import ROOT
from tests.test_cli import peftrun, read_json

register_configs()


def tiny(backbone: str, method: str = "icl"):
    from peftrun.backbones import load_backbone
    from peftrun.methods import apply_method

    with initialize_config_dir(CONF_DIR, version_base=None):
        cfg = compose("config", overrides=[f"backbone={backbone}", f"method={method}"])
    torch.manual_seed(0)
    backbone_ = load_backbone(cfg.backbone, cfg.paths, head="lm")
    apply_method(backbone_.model, backbone_.anatomy, cfg.method, tokenizer=backbone_.tokenizer)
    for name, param in backbone_.model.named_parameters():
        if "lora_B" in name:  # nonzero LoRA B, so the delta changes the scores
            torch.nn.init.normal_(param, std=0.5)
    return backbone_


@pytest.mark.parametrize(("backbone", "method"), [("tiny-gpt2", "icl"), ("tiny-gpt2", "lora"), ("tiny-t5", "icl"),
                                                  ("tiny-bart", "lora"), ("tiny-gpt2", "prefix")])
def test_prompt_encoded_once_equals_a_full_forward_per_option(backbone: str, method: str) -> None:
    b = tiny(backbone, method)
    b.model.eval()
    tok = b.tokenizer
    context = tok("the cat sat on the mat because it was", add_special_tokens=False)["input_ids"]
    options = [tok(o, add_special_tokens=False)["input_ids"] for o in [" warm", " a very long reason", " x y"]]
    start = getattr(b.model.config, "decoder_start_token_id", None)
    cached = option_logprobs(b.model, b.kind, context, options, tok.pad_token_id, start)
    reference = option_logprobs_reference(b.model, b.kind, context, options, tok.pad_token_id, start)
    assert [len(c) for c in cached] == [len(o) for o in options]
    for got, want in zip(cached, reference, strict=True):
        assert torch.allclose(torch.tensor(got), torch.tensor(want), atol=1e-5, rtol=0)


def test_length_normalisation_and_calibration_by_hand() -> None:
    scores = option_scores([[-1.0, -1.0, -1.0], [-2.5]])
    assert scores == {"sum": [-3.0, -2.5], "mean": [-1.0, -2.5]}
    assert choose(scores, "sum") == 1 and choose(scores, "mean") == 0
    # content-free p_cf = softmax([-1, -3]) favours option 0 strongly; dividing by it flips the choice
    content_free = {"sum": [-1.0, -3.0], "mean": [-1.0, -3.0]}
    p = [math.exp(-1.0), math.exp(-2.5)]
    cf = [math.exp(-1.0), math.exp(-3.0)]
    calibrated = [p[i] / sum(p) / (cf[i] / sum(cf)) for i in range(2)]
    assert choose(scores, "mean", content_free) == max(range(2), key=calibrated.__getitem__) == 1


# -- method=icl end to end ------------------------------------------------------------------------------------
ICL = ["method=icl", "task=rte", "task.data_dir=builtin", "task.formulation=rank", "logger=none"]


@pytest.mark.parametrize("backbone", ["tiny-gpt2", "tiny-t5"])
def test_icl_rank_run_trains_nothing_and_records_its_prompts(tmp_path: Path, backbone: str) -> None:
    run_dir = tmp_path / "run"
    proc = peftrun(f"backbone={backbone}", *ICL, "prompt=fewshot", "prompt.k=2", "prompt.calibrate=true",
                   f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = read_json(run_dir / "results.json")
    assert record["status"] == "complete" and record["trained"] is False and not record["train"]
    assert record["params"]["trainable"] == 0
    assert not (run_dir / "adapter").exists() and not (run_dir / "checkpoints").exists()
    data = record["data"]["validation"]
    assert data["examples"] == 4 and data["demonstrations_dropped"] == 0 and data["mean_prompt_tokens"] > 0
    rows = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]
    for row in rows:
        assert len(row["demonstrations"]) == 2 and row["id"].replace("validation", "train") not in \
            row["demonstrations"]  # the built-in rows repeat across splits: the query's duplicate is never shown
        assert row["options"] == ["entailment", "not_entailment"]
        best = choose(row["scores"], "sum", row["content_free"])
        assert row["prediction"] == row["options"][best] == rechoose(row, "sum", calibrate=True)
        assert rechoose(row, "mean") == row["option_labels"][choose(row["scores"], "mean")]
        assert row["normalize"] == "sum"
    # peftrun-score re-decides the saved rows under each rule; as saved = the run's own accuracy
    accuracy = {}
    for rule in ([], ["calibrate=false"], ["normalize=mean"], ["normalize=mean", "calibrate=true"]):
        out = tmp_path / f"scores{len(accuracy)}.json"
        proc = subprocess.run([sys.executable, "-m", "peftrun.score", "task=rte", "task.data_dir=builtin",
                               "split=validation", f"predictions={run_dir / 'predictions.jsonl'}", f"output={out}",
                               *rule], capture_output=True, text=True, cwd=ROOT)
        assert proc.returncode == 0, proc.stderr[-2000:]
        accuracy[" ".join(rule)] = read_json(out)["metrics"]["accuracy"]
    assert accuracy[""] == record["metrics"]["validation"]["accuracy"]
    golds = {row["id"]: row["references"][0] for row in rows}
    uncalibrated = sum(rechoose(row, "sum") == golds[row["id"]] for row in rows) / len(rows) * 100
    mean_calibrated = sum(rechoose(row, "mean", True) == golds[row["id"]] for row in rows) / len(rows) * 100
    assert accuracy["calibrate=false"] == pytest.approx(uncalibrated)
    assert accuracy["normalize=mean calibrate=true"] == pytest.approx(mean_calibrated)


def test_prompt_none_leaves_the_record_and_predictions_as_before(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = peftrun("trainer.max_steps=2", "task.max_eval_examples=2", "task.generation.max_new_tokens=4",
                   "logger=none", f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = read_json(run_dir / "results.json")
    assert set(record["config"]) == {"backbone", "method", "task", "trainer", "logger", "paths", "run_name"}
    assert "trained" not in record and (run_dir / "adapter").exists()
    rows = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]
    assert all(set(row) == {"split", "id", "input", "prediction", "references"} for row in rows)


@pytest.mark.parametrize(("overrides", "named"), [
    (["prompt=fewshot", "prompt.k=9"], "prompt.k=9 but the demonstration pool"),
    (["prompt=flan", "prompt.template=99"], "prompt.template='99' is not one of"),
    (["prompt=fewshot", "prompt.k=1", "prompt.max_tokens=3"], "is too small for query"),
    (["backbone=tiny-bert", "task.formulation=auto"], "trains nothing, but the classification formulation"),
])
def test_bad_prompt_configs_fail_with_one_line(tmp_path: Path, overrides: list[str], named: str) -> None:
    proc = peftrun("backbone=tiny-gpt2", *ICL, *overrides, f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and named in lines[0], proc.stderr
