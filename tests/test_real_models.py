"""Real pretrained checkpoints in the loop (marked `real_models`, deselected by default; see README).

    PEFTRUN_MODELS_DIR=~/.cache/peftrun/models python -m pytest -m real_models tests/test_real_models.py

Each test skips with a reason when its checkpoint is absent under paths.models_dir ($PEFTRUN_MODELS_DIR, else
~/.cache/peftrun/models). The GGUF is dequantised once into $PEFTRUN_CACHE_DIR (else ~/.cache/peftrun).
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from peftrun.config import BackboneConfig, PathsConfig
from tests.conftest import DATA_DIR, ROOT, require_data

pytestmark = pytest.mark.real_models
MODELS_DIR = Path(os.path.expanduser(os.environ.get("PEFTRUN_MODELS_DIR", "~/.cache/peftrun/models")))
CACHE_DIR = os.environ.get("PEFTRUN_CACHE_DIR", "~/.cache/peftrun")


def _require(*parts: str) -> Path:
    path = MODELS_DIR.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not present: put the checkpoint there (or set PEFTRUN_MODELS_DIR)")
    return path


def _backbone_cfg(name: str, paths: PathsConfig) -> BackboneConfig:
    root = OmegaConf.create({"paths": OmegaConf.to_container(OmegaConf.structured(paths))})
    root.backbone = OmegaConf.merge(OmegaConf.structured(BackboneConfig),
                                    OmegaConf.load(ROOT / "conf" / "backbone" / f"{name}.yaml"))
    return OmegaConf.to_object(root.backbone)


def test_lora_on_smollm2_lowers_the_validation_loss_on_e2e() -> None:
    _require("smollm2-135m-instruct", "SmolLM2-135M-Instruct.Q4_1.gguf")
    e2e = require_data("e2e", "trainset.csv")
    from peftrun.backbones import load_backbone
    from peftrun.methods import apply_method

    paths = PathsConfig(data_dir=str(DATA_DIR), cache_dir=CACHE_DIR, models_dir=str(MODELS_DIR))
    backbone = load_backbone(_backbone_cfg("smollm2-135m-instruct", paths), paths)
    model, tok = backbone.model, backbone.tokenizer
    with e2e.open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))[:24]
    texts = [f"{r['mr']}\n{r['ref']}{tok.eos_token}" for r in rows]
    train, held_out = texts[:16], texts[16:]

    def loss(batch: list[str]) -> torch.Tensor:
        enc = tok(batch, return_tensors="pt", padding=True)
        labels = enc.input_ids.masked_fill(enc.attention_mask == 0, -100)
        return model(**enc, labels=labels).loss

    applied = apply_method(model, backbone.anatomy, {"name": "lora", "train": "none", "top_k": 0, "deltas": [
        {"kind": "lora", "rank": 8, "alpha": 16.0, "targets": ["q", "v"]}]})
    with torch.no_grad():
        before = loss(held_out).item()
    assert applied.param_report()["trainable"] == 460_800
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    model.train()
    for step in range(6):
        optimizer.zero_grad()
        loss(train[(step % 4) * 4:(step % 4) * 4 + 4]).backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        after = loss(held_out).item()
    assert after < before, (before, after)


def test_minilm_on_rte_beats_the_majority_class(tmp_path: Path) -> None:
    _require("minilm-l6", "config.json")
    rte = require_data("superglue", "full", "RTE")
    labels = [json.loads(line)["label"] for line in (rte / "val.jsonl").read_text().splitlines() if line.strip()]
    majority = max(labels.count(x) for x in set(labels)) / len(labels)
    env = {**os.environ, "PEFTRUN_MODELS_DIR": str(MODELS_DIR), "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "peftrun", "backbone=minilm-l6", "method=full", "task=rte",
               f"task.data_dir={rte}", "trainer.epochs=1", "trainer.lr=5e-5", "trainer.batch_size=16",
               "task.max_source_length=128", "logger=none", f"hydra.run.dir={tmp_path}"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env, timeout=1800)
    assert done.returncode == 0, done.stderr[-2000:]
    record = json.loads((tmp_path / "results.json").read_text())
    assert record["status"] == "complete", record["metrics"]
    value = _find_accuracy(record["metrics"])
    assert value > 100 * majority, (value, majority)  # peftrun reports accuracy in percent


def _find_accuracy(metrics: object) -> float:
    """The first `accuracy` number anywhere in the metrics record."""
    if isinstance(metrics, dict):
        for key, value in metrics.items():
            if key.endswith("accuracy") and isinstance(value, int | float):
                return float(value)
            found = _find_accuracy(value)
            if found >= 0:
                return found
    return -1.0
