"""Prompt transfer (method.init_from): a prompt method starts from another run's saved prompt, equal to it;
shapes and kinds are checked with one error line; a missing source fails before any model loads."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from rich.console import Console

from peftrun.errors import PeftrunError
from peftrun.instruction.transfer import init_prompts_from
from peftrun.methods import apply_method
from tests.methods_tiny import method, tiny

PROMPT = {"kind": "prompt_tuning", "length": 4, "init": "random"}
PTUNING = {"kind": "ptuning", "template": "[P][P] {x} [P][P] {y}", "encoder": "lstm"}
DEEP = {"kind": "prefix", "length": 3, "mid_dim": None, "dropout": 0.0}
DEEP_MLP = {"kind": "prefix", "length": 3, "mid_dim": 16, "dropout": 0.0}


def saved_source(tmp_path: Path, family: str, delta: dict, head: str = "lm", labels: int | None = None) -> Path:
    """A run directory whose adapter/ holds `delta` with non-initial values."""
    backbone = tiny(family, head, labels)
    applied = apply_method(backbone.model, backbone.anatomy, method(delta), tokenizer=backbone.tokenizer,
                           train_head=head != "lm")
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for param in applied.deltas.parameters():
            param.add_(torch.randn(param.shape, generator=gen))
    applied.save(tmp_path / "adapter")
    return tmp_path


def started(family: str, delta: dict, source: Path, head: str = "lm", labels: int | None = None):
    backbone = tiny(family, head, labels)
    applied = apply_method(backbone.model, backbone.anatomy, method(delta), tokenizer=backbone.tokenizer,
                           train_head=head != "lm")
    return applied, init_prompts_from(applied, str(source))


def source_state(source: Path, family: str, delta: dict, head: str = "lm", labels: int | None = None) -> dict:
    from peftrun.methods import load_method

    backbone = tiny(family, head, labels)
    loaded = load_method(backbone.model, backbone.anatomy, source / "adapter", tokenizer=backbone.tokenizer)
    return next(iter(loaded.deltas.values())).saved_state_dict()


@pytest.mark.parametrize(("family", "source_delta", "target_delta", "head", "labels"), [
    ("gpt2", PROMPT, PROMPT, "lm", None),          # prompt tuning -> prompt tuning (e.g. -> IPT)
    ("gpt2", PTUNING, PROMPT, "lm", None),         # P-tuning's 4 pseudo tokens -> a 4-token prompt
    ("bert", DEEP, DEEP, "classification", 3),     # P-tuning v2 (shared, multi-task) -> per-task continuation
    ("t5", DEEP_MLP, DEEP, "lm", None),            # prefix-tuning (saved: the MLP's output) -> P-tuning v2
])
def test_loaded_prompt_equals_the_saved_one(tmp_path: Path, family, source_delta, target_delta, head,
                                            labels) -> None:
    source = saved_source(tmp_path, family, source_delta, head, labels)
    applied, loaded = started(family, target_delta, source, head, labels)
    expected = source_state(source, family, source_delta, head, labels)
    got = next(iter(applied.deltas.values())).saved_state_dict()
    assert set(got) == set(expected) and all(torch.equal(got[k], expected[k]) for k in got)
    assert next(iter(loaded.values()))["shapes"] == {k: list(v.shape) for k, v in expected.items()}
    trainable = [p for p in applied.deltas.parameters() if p.requires_grad]
    assert trainable and sum(p.numel() for p in trainable) == sum(v.numel() for v in expected.values())


def test_mismatches_fail_with_one_line(tmp_path: Path) -> None:
    source = saved_source(tmp_path / "deep", "bert", DEEP, "classification", 2)
    with pytest.raises(PeftrunError, match=r"prompt shapes .*\(2, 2, 3, 64\).* do not match .*\(2, 2, 5, 64\)") as err:
        started("bert", {**DEEP, "length": 5}, source, "classification", 2)
    assert "\n" not in str(err.value)
    with pytest.raises(PeftrunError, match="its prefix \\(deep prompt\\) cannot start this method's prompt_tuning"):
        started("bert", PROMPT, source, "classification", 2)
    with pytest.raises(PeftrunError, match="saved for a bert backbone, this run is gpt2"):
        started("gpt2", DEEP, source)
    with pytest.raises(PeftrunError, match="is for prompt methods"):
        started("bert", {"kind": "lora", "rank": 2, "targets": ["q"]}, source, "classification", 2)


def test_a_missing_source_fails_before_any_model_loads(tmp_path: Path) -> None:
    from peftrun.experiment import run_experiment
    from tests.test_mixture import compose_run

    cfg = compose_run("backbone=tiny-bert", "method=ptuning_v2", "task=rte", "task.data_dir=builtin", "logger=none",
                      f"method.init_from={tmp_path / 'nowhere'}")
    with pytest.raises(PeftrunError, match=r"method.init_from=.*nowhere: no adapter"):
        run_experiment(cfg, tmp_path / "run", [], Console(quiet=True))
    assert not (tmp_path / "run" / "results.json").exists()  # nothing was started


def test_continuation_run_records_where_its_prompt_came_from(tmp_path: Path) -> None:
    from tests.test_mixture import run

    source = saved_source(tmp_path / "shared", "bert", {**DEEP, "dropout": 0.1, "length": 4}, "classification", 2)
    record = run(tmp_path / "rte", "backbone=tiny-bert", "method=ptuning_v2", "method.length=4", "method.train=head",
                 "task=rte", "task.data_dir=builtin", "trainer.max_steps=2", f"method.init_from={source}",
                 "logger=none")
    assert record["status"] == "complete"
    assert record["init_from"]["prefix"]["from"].endswith("adapter:prefix")
