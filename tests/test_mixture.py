"""Multi-task mixtures (task=mixture): temperature rates in closed form, a sampler whose order is a function of
(seed, epoch, step), the FLAN leakage check, per-task metrics, one head per task (multi-task P-tuning v2) and
FLAN instruction templates; prompt transfer (method.init_from) is in tests/test_prompt_transfer.py."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from rich.console import Console
from safetensors.torch import load_file

from peftrun.cli import CONF_DIR  # importing the CLI registers the config schemas
from peftrun.config import TaskConfig
from peftrun.errors import PeftrunError
from peftrun.instruction.flan import check_leakage
from peftrun.instruction.mixing import MixtureSampler, mixing_rates
from peftrun.instruction.multitask_head import multitask_head_loss
from peftrun.tasks.base import build_task
from tests.conftest import require_data

FAST = ["logger=none", "trainer.batch_size=2", "task.max_eval_examples=4"]


def compose_run(*overrides: str):
    data = require_data("instructions", "flan")
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=[f"paths.data_dir={data.parent.parent}", *overrides])


def run(tmp_path: Path, *overrides: str) -> dict:
    from peftrun.experiment import run_experiment

    return run_experiment(compose_run(*overrides), tmp_path, [], Console(quiet=True))


def mixture_task(train: list[str], evaluate: list[str], **mixture) -> object:
    data = require_data("instructions", "flan").parent.parent
    cfg = OmegaConf.merge(OmegaConf.structured(TaskConfig), OmegaConf.load(Path(CONF_DIR) / "task" / "mixture.yaml"),
                          {"data_dir": "builtin", "mixture": {"train": train, "eval": evaluate, "seed": 0, **mixture}})
    return build_task(cfg, str(data))


# ------------------------------------------------------------------------------------------- rates and order


def test_temperature_rates_in_closed_form() -> None:
    assert mixing_rates([100, 400], 1.0) == pytest.approx([0.2, 0.8])  # examples-proportional
    assert mixing_rates([100, 400], 2.0) == pytest.approx([10 / 30, 20 / 30])  # sqrt: 10, 20
    sizes = [3000, 30, 300]
    t = 8.0
    weights = [n ** (1 / t) for n in sizes]
    assert mixing_rates(sizes, t) == pytest.approx([w / sum(weights) for w in weights])
    assert mixing_rates(sizes, 1e6) == pytest.approx([1 / 3] * 3, abs=1e-5)  # T -> inf: equal
    assert mixing_rates([5, 0], 1.0) == [1.0, 0.0]
    with pytest.raises(PeftrunError, match="temperature"):
        mixing_rates([1, 2], 0.0)


def test_mixture_order_is_a_function_of_seed_epoch_and_step() -> None:
    groups = [0] * 30 + [1] * 90 + [2] * 6
    rates = mixing_rates([30, 90, 6], 2.0)
    a = MixtureSampler(groups, rates, global_batch=4, seed=3, homogeneous=False)
    b = MixtureSampler(groups, rates, global_batch=4, seed=3, homogeneous=False)
    a.set_epoch(1)
    list(a)  # iterating another epoch first changes nothing: no state carries over
    a.set_epoch(0)
    assert list(a) == list(b)  # same (seed, epoch): same order, whatever came before
    b.set_epoch(1)
    epoch1 = list(b)
    assert epoch1 != list(MixtureSampler(groups, rates, 4, 3, False)) and len(epoch1) == len(groups)
    c = MixtureSampler(groups, rates, 4, seed=4, homogeneous=False)
    assert list(c) != list(MixtureSampler(groups, rates, 4, 3, False))
    # a task's items come in permutations: all of task 2's six items are used before any repeats (T=2 draws it
    # about 18 times in an epoch)
    drawn = [i for i in epoch1 if groups[i] == 2]
    assert len(drawn) > 6 and sorted(drawn[:6]) == list(range(120, 126))


def test_homogeneous_batches_and_rates_over_many_draws() -> None:
    groups = [0] * 10 + [1] * 40
    rates = mixing_rates([10, 40], 1.0)
    sampler = MixtureSampler(groups * 40, rates, global_batch=8, seed=0, homogeneous=True)  # 2,000 items
    sampler.members = [[i for i, g in enumerate(groups * 40) if g == t] for t in range(2)]
    order = list(sampler)
    assert len(order) == len(sampler) == 2000
    batches = [order[i : i + 8] for i in range(0, len(order), 8)]
    assert all(len({(groups * 40)[i] for i in batch}) == 1 for batch in batches)  # one task per global batch
    share = sum((groups * 40)[batch[0]] == 0 for batch in batches) / len(batches)
    assert abs(share - 0.2) < 3 * math.sqrt(0.2 * 0.8 / len(batches))  # p_0 = 10 / 50


# ------------------------------------------------------------------------------------------- leakage


@pytest.mark.parametrize(("train", "evaluate", "why"), [
    (["boolq"], ["multirc"], "FLAN cluster 'reading_comprehension'"),
    (["e2e", "xsum"], ["dart"], "FLAN cluster 'structure_to_text'"),
    (["rte"], ["rte"], "source dataset 'rte'"),
    (["record"], ["copa"], "neighbouring FLAN clusters 'read_comp_and_common_sense' / 'common_sense'"),
])
def test_leakage_fails_before_training_with_one_line(train, evaluate, why) -> None:
    data = str(require_data("instructions", "flan").parent.parent)
    with pytest.raises(PeftrunError, match=f"leakage: .*share (the )?{re.escape(why)}") as err:
        check_leakage(train, evaluate, data)
    assert "\n" not in str(err.value)
    with pytest.raises(PeftrunError, match="leakage"):
        mixture_task(train, evaluate)  # build_task, the first step of a run: before any model loads


def test_held_out_nli_split_has_no_leakage() -> None:
    data = str(require_data("instructions", "flan").parent.parent)
    check_leakage(["e2e", "dart", "webnlg", "xsum", "boolq"], ["rte", "cb"], data)
    task = mixture_task(["rte", "boolq"], ["rte", "boolq"], check_leakage="off")  # multi-task on its own tasks
    assert task.evaluation_splits() == ["rte/validation", "boolq/validation"]


def test_bad_mixtures_fail_with_one_line() -> None:
    with pytest.raises(PeftrunError, match="unknown member task 'nope'"):
        mixture_task(["nope"], ["rte"])
    with pytest.raises(PeftrunError, match="names a task twice"):
        mixture_task(["xsum", "xsum"], ["rte"])
    with pytest.raises(PeftrunError, match="needs members"):
        mixture_task([], [])
    with pytest.raises(PeftrunError, match="max_per_task"):
        mixture_task(["xsum"], ["rte"], max_per_task=0)


# ------------------------------------------------------------------------------------------- loading and scoring


def test_caps_groups_and_per_member_scoring() -> None:
    task = mixture_task(["xsum", "boolq"], ["rte", "cb"], max_per_task=3)
    train = task.load("train", grouped=False)
    assert task.sizes == {"xsum": 3, "boolq": 3} and task.groups == [0, 0, 0, 1, 1, 1]
    assert [e.meta["task"] for e in train] == ["xsum"] * 3 + ["boolq"] * 3
    assert train[0].id.startswith("xsum/")
    rte = task.load("rte/validation", grouped=True)
    gold = [e.target for e in rte]
    assert task.score(gold, rte)["accuracy"] == 100.0  # the member's own metric on the member's labels
    with pytest.raises(PeftrunError, match="one member"):
        task.score(gold + ["x"], rte + task.load("cb/validation", grouped=True)[:1])


def test_text_mixture_run_records_per_task_metrics(tmp_path: Path) -> None:
    record = run(tmp_path, "backbone=tiny-gpt2", "task=mixture", "task.data_dir=builtin",
                 "task.mixture.train=[boolq,xsum]", "task.mixture.eval=[rte,cb]", "task.mixture.temperature=2",
                 "trainer.max_steps=3", "task.generation.max_new_tokens=4", *FAST)
    assert record["status"] == "complete"
    assert set(record["metrics"]) == {"rte/validation", "cb/validation"}
    assert set(record["metrics"]["cb/validation"]) == {"accuracy", "macro_f1", "invalid"}
    assert record["mixture"]["train"] == {"boolq": {"examples": 4, "rate": 0.5}, "xsum": {"examples": 4, "rate": 0.5}}


# ------------------------------------------------------------------------------------------- one head per task


def test_multitask_head_loss_stays_in_each_tasks_columns() -> None:
    owner = torch.tensor([0, 0, 1, 1, 1])  # task 0: columns 0-1, task 1: columns 2-4
    logits = torch.randn(3, 5, requires_grad=True)
    labels = torch.tensor([1, 4, 2])
    loss, count = multitask_head_loss(logits, labels, owner)
    expected = (-torch.log_softmax(logits[0, :2], -1)[1] - torch.log_softmax(logits[1, 2:], -1)[2]
                - torch.log_softmax(logits[2, 2:], -1)[0])
    torch.testing.assert_close(loss, expected)
    assert count == 3
    loss.backward()
    assert torch.all(logits.grad[0, 2:] == 0) and torch.all(logits.grad[1:, :2] == 0)  # other heads untouched


def test_multitask_ptuning_v2_trains_one_head_per_task_and_saves_the_shared_prompt(tmp_path: Path) -> None:
    record = run(tmp_path, "backbone=tiny-bert", "method=ptuning_v2", "method.length=4", "method.train=head",
                 "task=mixture", "task.data_dir=builtin", "task.mixture.train=[rte,boolq,cb]",
                 "task.mixture.eval=[rte,boolq,cb]", "task.mixture.check_leakage=off", "trainer.max_steps=6",
                 "trainer.lr=1e-2", *FAST)
    assert record["status"] == "complete" and record["mixture"]["homogeneous_batches"]
    assert set(record["metrics"]) == {"rte/validation", "boolq/validation", "cb/validation"}
    saved = load_file(str(tmp_path / "adapter" / "adapter_model.safetensors"))
    assert saved["backbone.classifier.weight"].shape[0] == 2 + 2 + 3  # one head (column block) per task
    assert any(k.startswith("deltas.prefix.") for k in saved)  # the shared deep prompt
    rows = (tmp_path / "predictions.jsonl").read_text().splitlines()
    cb = [r for r in rows if '"cb/validation"' in r]
    assert cb and all(any(f'"prediction": "{n}"' in r for n in ("entailment", "contradiction", "neutral"))
                      for r in cb)  # CB predictions come from CB's own columns


# ------------------------------------------------------------------------------------------- instruction templates


def test_flan_templates_round_robin_and_per_template_evaluation() -> None:
    task = mixture_task(["boolq", "xsum"], ["rte"], templates="flan")
    train = task.load("train", grouped=False)
    assert all(e.meta["template"].startswith("flan") for e in train)
    boolq = [e.meta["template"] for e in train if e.meta["task"] == "boolq"]
    assert len(set(boolq)) == len(boolq)  # round-robin: 4 examples, 4 different templates
    again = mixture_task(["boolq", "xsum"], ["rte"], templates="flan").load("train", grouped=False)
    assert [e.source for e in again] == [e.source for e in train]  # deterministic for a seed
    other = mixture_task(["boolq", "xsum"], ["rte"], templates="flan", seed=1).load("train", grouped=False)
    assert [e.meta["template"] for e in other] != [e.meta["template"] for e in train]
    splits = task.evaluation_splits()
    assert splits == [f"rte/validation/flan{i}" for i in range(10)]
    rte = task.load(splits[0], grouped=True)
    assert "OPTIONS:\n- yes\n- no" in rte[0].source and rte[0].references in (("yes",), ("no",))
    assert task.score([e.references[0] for e in rte], rte)["accuracy"] == 100.0  # option words -> labels
    assert task.score(["maybe"] * len(rte), rte)["invalid"] == 100.0
    metrics = {"rte/validation/flan0": {"accuracy": 50.0, "invalid": 10.0},
               "rte/validation/flan1": {"accuracy": 70.0, "invalid": 0.0},
               "rte/validation/flan2": {"accuracy": 90.0, "invalid": 5.0}}
    summary = task.metric_summary(metrics)["rte/validation"]
    assert summary == {"accuracy_mean": 70.0, "accuracy_median": 70.0, "accuracy_best": 90.0,
                       "invalid_mean": 5.0, "invalid_median": 5.0, "invalid_best": 0.0}


def test_k_shot_held_out_queries_show_their_members_training_examples_under_the_same_template() -> None:
    zero = mixture_task(["xsum"], ["rte"], templates="flan")
    task = mixture_task(["xsum"], ["rte"], templates="flan", eval_shots=2)
    train = {e.id: e for e in task.members["rte"].load("train", grouped=False)}
    for split in ("rte/validation/flan0", "rte/validation/flan3"):
        queries, plain = task.load(split, grouped=True), zero.load(split, grouped=True)
        for query, bare in zip(queries, plain, strict=True):
            shown = query.meta["demonstrations"]
            assert len(set(shown)) == 2 and set(shown) <= set(train)
            template = next(t for t in task.templates["rte"] if f"{t.source}{t.id}" == split.rsplit("/", 1)[1])
            from peftrun.instruction.render import render_example

            demos = [render_example("rte", train[i], template) for i in shown]
            assert query.source == "\n\n".join([f"{d.source} {d.target}" for d in demos] + [bare.source])
            assert query.references == bare.references and query.meta["options"] == bare.meta["options"]
    again = mixture_task(["xsum"], ["rte"], templates="flan", eval_shots=2).load("rte/validation/flan0", True)
    assert [q.source for q in again] == [q.source for q in task.load("rte/validation/flan0", True)]
    with pytest.raises(PeftrunError, match="eval_shots=99: rte has 4 training examples"):
        mixture_task(["xsum"], ["rte"], templates="flan", eval_shots=99)
    with pytest.raises(PeftrunError, match="eval_shots=-1"):
        mixture_task(["xsum"], ["rte"], eval_shots=-1)


def test_a_mixture_run_resumed_mid_epoch_ends_like_an_uninterrupted_one(tmp_path: Path) -> None:
    """8 examples, batch 2: 4 steps per epoch; resuming from the step-6 checkpoint skips 2 batches of epoch 1."""
    import shutil

    args = ["backbone=tiny-gpt2", "task=mixture", "task.data_dir=builtin", "task.mixture.train=[boolq,xsum]",
            "task.mixture.eval=[rte]", "task.mixture.temperature=3", "trainer.max_steps=8", "trainer.save_every=3",
            "trainer.logging_steps=1", "trainer.do_eval=false", "method.dropout=0", *FAST]
    full = run(tmp_path / "full", *args)
    resumed_dir = tmp_path / "resumed"
    shutil.copytree(tmp_path / "full" / "checkpoints" / "checkpoint-6", resumed_dir / "checkpoints" / "checkpoint-6")
    resumed = run(resumed_dir, *args)
    assert resumed["train"]["resumed_from"].endswith("checkpoint-6")
    assert resumed["train"]["final_loss"] == full["train"]["final_loss"]
    a = load_file(str(tmp_path / "full" / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(resumed_dir / "adapter" / "adapter_model.safetensors"))
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------------------- Super-NI members


def test_superni_members_render_definition_and_two_positive_examples() -> None:
    require_data("instructions", "superni")
    task = mixture_task(["superni:train"], ["superni:test"], check_leakage="source")
    assert len(task.train_names) == 35 and len(task.eval_names) == 26  # the shipped subset, official splits
    assert "superni:task1344_glue_entailment_classification" in task.eval_names
    member = task.members["superni:task1344_glue_entailment_classification"]
    assert member.source_dataset == "rte"
    test = task.load("superni:task1344_glue_entailment_classification/test", grouped=True)
    assert len(test) == 100
    first = test[0].source
    assert first.startswith("Definition: In this task, you're given two sentences.")
    assert first.count("Positive Example") == 2 and first.rstrip().endswith("Output:")
    assert "Negative Example" not in first
    assert test[0].id.startswith("superni:task1344_glue_entailment_classification/task1344-")


def test_superni_metrics_follow_its_evaluation_script() -> None:
    from peftrun.tasks.base import Example
    from peftrun.tasks.superni import normalize_answer

    assert normalize_answer("  The Answer, is: A! ") == "the answer is a"  # articles kept (unlike SQuAD)
    task = mixture_task(["superni:task1146_country_capital"], ["superni:task1344_glue_entailment_classification"],
                        check_leakage="source")
    member = task.members["superni:task1344_glue_entailment_classification"]
    examples = [Example("a", "x", "A", ("A", "B"), None), Example("b", "y", "the cat sat", ("the cat sat",), None)]
    scores = member.score(["b.", "cat sat"], examples)
    assert scores["exact_match"] == 50.0  # "b." matches the second reference "B"
    assert scores["rougeL"] == pytest.approx(100 * (1.0 + 2 * (2 / 2) * (2 / 3) / (2 / 2 + 2 / 3)) / 2)


def test_superni_leakage_by_source_and_flan_cluster() -> None:
    require_data("instructions", "superni")
    with pytest.raises(PeftrunError, match="share the source dataset 'rte'"):
        mixture_task(["rte"], ["superni:task1344_glue_entailment_classification"])
    with pytest.raises(PeftrunError, match="share the FLAN cluster 'paraphrase'"):
        mixture_task(["superni:train"], ["superni:test"])  # STS-B (train) and QQP (test): FLAN's paraphrase cluster
    mixture_task(["superni:train"], ["superni:test"], check_leakage="source")  # Super-NI's protocol: by task


def test_held_out_members_by_rank_classification_over_flan_options(tmp_path: Path) -> None:
    """FLAN's zero-shot protocol for classification: the option with the highest log-likelihood is the answer."""
    record = run(tmp_path, "backbone=tiny-gpt2", "task=mixture", "task.data_dir=builtin", "task.formulation=rank",
                 "task.mixture.train=[xsum]", "task.mixture.eval=[rte,copa]", "task.mixture.templates=flan",
                 "task.mixture.template_eval=round_robin", "trainer.max_steps=1", *FAST)
    assert record["metrics"]["rte/validation"]["invalid"] == 0.0  # always one of the options
    rows = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    for row in rows:
        best = max(range(len(row["options"])), key=lambda i: row["scores"]["sum"][i])
        assert row["prediction"] == row["options"][best]
    assert {tuple(r["options"]) for r in rows if r["split"] == "rte/validation"} == {("yes", "no")}
    with pytest.raises(PeftrunError, match="xsum has none"):
        run(tmp_path / "bad", "backbone=tiny-gpt2", "task=mixture", "task.data_dir=builtin", "task.formulation=rank",
            "task.mixture.train=[rte]", "task.mixture.eval=[xsum]", *FAST)


def test_a_frozen_model_scores_held_out_members_in_the_natural_layout(tmp_path: Path, monkeypatch) -> None:
    """Zero-shot on a frozen model (method=icl) reads the text a pretrained LM reads: the option with its leading
    space right after the prompt, no EOS between or after; a tuned model is scored in its training layout
    (prompt + EOS, then the option's tokens + EOS)."""
    import peftrun.formulations.rank as rank
    from peftrun.backbones.tiny import tiny_tokenizer

    scored: list[tuple[list[int], list[list[int]]]] = []
    real = rank.option_logprobs
    monkeypatch.setattr(rank, "option_logprobs", lambda model, kind, context, options, *rest: (
        scored.append((context, options)) or real(model, kind, context, options, *rest)))
    common = ["backbone=tiny-gpt2", "task=mixture", "task.data_dir=builtin", "task.formulation=rank",
              "task.mixture.train=[xsum]", "task.mixture.eval=[rte]", "task.mixture.templates=flan",
              "task.mixture.template_eval=round_robin", f"paths.cache_dir={tmp_path / 'cache'}", *FAST]
    tok = tiny_tokenizer("gpt2", str(tmp_path / "cache"))
    eos = tok.eos_token_id
    expected = {"frozen": [tok(" " + o)["input_ids"] for o in ("yes", "no")],
                "tuned": [tok(o)["input_ids"] + [eos] for o in ("yes", "no")]}
    for name, method in (("frozen", ["method=icl"]), ("tuned", ["method=lora", "trainer.max_steps=1"])):
        scored.clear()
        record = run(tmp_path / name, *common, *method)
        assert record.get("trained", True) is (name == "tuned")
        assert len(scored) == 4
        assert all(options == expected[name] for _, options in scored)
        assert all((context[-1] == eos) is (name == "tuned") for context, _ in scored)


def test_a_frozen_model_generates_from_its_natural_prompt_and_stops_at_a_blank_line(tmp_path: Path,
                                                                                     monkeypatch) -> None:
    """Text members on a frozen model: the prompt is the tokenizer's own encoding of the source (no trained-layout
    EOS at its end) and the answer is cut at the first blank line (nothing tells a frozen model to stop)."""
    import peftrun.formulations.text as text

    prompts: list[list[int]] = []
    monkeypatch.setattr(text, "_generate", lambda backbone, ids, *rest: (
        prompts.extend(ids) or ["yes\n\nPremise: more text"] * len(ids)))
    record = run(tmp_path, "backbone=tiny-gpt2", "method=icl", "task=mixture", "task.data_dir=builtin",
                 "task.mixture.train=[xsum]", "task.mixture.eval=[rte]", f"paths.cache_dir={tmp_path / 'cache'}",
                 *FAST)
    from peftrun.backbones.tiny import tiny_tokenizer

    tok = tiny_tokenizer("gpt2", str(tmp_path / "cache"))
    rows = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert [r["prediction"] for r in rows] == ["yes"] * 4
    assert prompts == [tok(r["input"])["input_ids"] for r in rows]
    assert record["data"]["rte/validation"]["truncated_sources"] == 0
