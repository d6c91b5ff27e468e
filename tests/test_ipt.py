"""Instruction prompt tuning (method=ipt): training prompts carry retrieved demonstrations (never the example
itself), the soft prompt is the only trained tensor, and bad configs fail with one line before any model loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from peftrun.errors import PeftrunError
from tests.test_mixture import compose_run, run

IPT = ["method=ipt", "method.length=4", "prompt=fewshot", "prompt.k=2", "prompt.retriever=bm25", "prompt.pool=24",
       "prompt.max_tokens=200", "task.max_source_length=200", "task=synthetic", "logger=none"]


def test_training_prompts_carry_retrieved_demonstrations_never_themselves() -> None:
    from peftrun.formulations import Prompting
    from peftrun.instruction.ipt import demonstrated_training_examples
    from peftrun.prompting.build import PromptBuilder
    from peftrun.tasks.base import build_task
    from tests.methods_tiny import tiny

    cfg = compose_run(*IPT)
    task = build_task(cfg.task, cfg.paths.data_dir)
    train = task.load("train", grouped=False)[:24]
    builder = PromptBuilder(cfg.prompt, task, cfg.paths.data_dir)
    prompting = Prompting(builder, builder.pool(train))
    record: dict = {"data": {}}
    shown = demonstrated_training_examples(cfg, prompting, tiny("gpt2"), train[:8], record)
    pool = {ex.id: ex for ex in prompting.pool}
    assert record["data"]["train_prompts"]["mean_demonstrations"] == 2.0  # the budget keeps both
    for query, ex in zip(train[:8], shown, strict=True):
        ids = ex.meta["demonstrations"]
        assert len(ids) == 2 and query.id not in ids
        assert all(pool[i].source != query.source for i in ids)  # no exact duplicate either
        assert ex.source.endswith(query.source) and ex.target == query.target
        assert all(pool[i].source in ex.source and pool[i].target in ex.source for i in ids)


def test_ipt_run_trains_only_the_soft_prompt_on_demonstrated_prompts(tmp_path: Path) -> None:
    record = run(tmp_path, *IPT, "trainer.max_steps=2", "task.max_train_examples=12", "task.max_eval_examples=3",
                 "task.generation.max_new_tokens=4")
    assert record["status"] == "complete"
    assert record["data"]["train_prompts"]["examples"] == 12 and record["data"]["train_prompts"]["mean_demonstrations"] > 0
    assert record["params"]["trainable"] == 4 * 64  # 4 virtual tokens x tiny-gpt2's width
    rows = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert all(len(r["demonstrations"]) == 2 for r in rows)


@pytest.mark.parametrize(("overrides", "message"), [
    (["method=ipt", "task=synthetic"], "trains with retrieved demonstrations"),
    (["method=ipt", "prompt=fewshot", "prompt.k=0", "task=synthetic"], "trains with retrieved demonstrations"),
    (["task=mixture", "task.data_dir=builtin", "task.mixture.train=[xsum]", "task.mixture.eval=[rte]",
      "prompt=fewshot"], "task=mixture renders its members itself"),
])
def test_bad_ipt_configs_fail_before_any_model_loads(tmp_path: Path, overrides, message) -> None:
    from peftrun.experiment import run_experiment

    with pytest.raises(PeftrunError, match=message) as err:
        run_experiment(compose_run(*overrides, "logger=none"), tmp_path, [], Console(quiet=True))
    assert "\n" not in str(err.value) and not (tmp_path / "results.json").exists()
