"""SuperGLUE: hand-computed metric cases, both formulations, loaders (built-in, local, hub rows), shared files."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from peftrun.config import TaskConfig
from peftrun.errors import PeftrunError
from peftrun.metrics.classification import accuracy, macro_f1, multirc_scores, record_scores, token_f1
from peftrun.tasks.base import build_task
from tests.conftest import require_data

ALL = ("boolq", "cb", "copa", "rte", "wic", "wsc", "multirc", "record")


def make(name: str, **overrides):
    return build_task(OmegaConf.structured(TaskConfig(name=name, **overrides)), None)


# -- metrics, by hand ---------------------------------------------------------------------------------------
def test_accuracy_and_macro_f1_by_hand() -> None:
    golds, preds = [0, 0, 1, 2], [0, 1, 1, -1]  # -1: a generation that names no label
    assert accuracy(preds, golds) == 50.0
    # class 0: tp 1, fp 0, fn 1 -> 2/3; class 1: tp 1, fp 1, fn 0 -> 2/3; class 2: tp 0 -> 0
    assert macro_f1(preds, golds) == pytest.approx(100 * (2 / 3 + 2 / 3 + 0) / 3)


def test_multirc_f1a_and_em_by_hand() -> None:
    golds = [1, 0, 1, 0, 1]
    preds = [1, 0, 0, 0, 1]
    questions = ["q1", "q1", "q1", "q2", "q2"]
    scores = multirc_scores(preds, golds, questions)
    assert scores["f1a"] == pytest.approx(100 * 2 * 2 / (2 * 2 + 0 + 1))  # tp 2, fp 0, fn 1
    assert scores["em"] == 50.0  # q1 has a wrong option, q2 is all right


def test_record_max_over_golds_by_hand() -> None:
    assert token_f1("Diego", "Diego Costa") == pytest.approx(2 / 3)  # precision 1, recall 1/2
    scores = record_scores(["the Diego Costa", "Costa", "Diego", "Zouma"],
                           [["Diego Costa"], ["Diego Costa", "Costa"], ["Diego Costa"], ["Diego Costa"]])
    assert scores["em"] == 50.0  # articles are dropped; "Costa" equals the second gold
    assert scores["f1"] == pytest.approx(100 * (1 + 1 + 2 / 3 + 0) / 4)


# -- formulations and verbalizers ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", ALL)
def test_builtin_sample_loads_and_scores_its_targets(name: str) -> None:
    sg = make(name, data_dir="builtin")
    examples = sg.load("validation", grouped=True)
    assert examples and all(e.source.startswith(name) for e in examples)
    scores = sg.score([e.target for e in examples], examples)
    assert all(v == 100.0 for k, v in scores.items() if k != "invalid") and scores.get("invalid", 0.0) == 0.0
    meta = examples[0].meta or {}
    if sg.head == "candidates":
        assert 0 <= meta["label"] < len(meta["candidates"])
    else:
        assert sg.label_names[meta["label"]] == examples[0].target and meta["text_a"]


def test_formulation_by_backbone() -> None:
    rte, copa, record = make("rte", data_dir="builtin"), make("copa", data_dir="builtin"), make("record", data_dir="builtin")
    assert [rte.formulation(k) for k in ("decoder", "encoder-decoder", "encoder")] == ["text", "text", "classification"]
    assert copa.formulation("encoder") == "candidates" and record.formulation("encoder") == "candidates"
    with pytest.raises(PeftrunError, match="encoder backbone cannot"):
        make("rte", data_dir="builtin", formulation="text").formulation("encoder")
    assert make("rte", data_dir="builtin", formulation="head").formulation("decoder") == "classification"


def test_verbalizers_map_generations_to_labels() -> None:
    boolq = make("boolq", data_dir="builtin", verbalizers=["no", "yes"])
    examples = boolq.load("validation", grouped=True)
    assert [e.target for e in examples] == ["yes", "no", "yes", "no"]
    # normalised exact match; label names (a head's output) count too; anything else is wrong and "invalid"
    scores = boolq.score(["Yes.", " NO ", "True", "maybe yes"], examples)
    assert scores["accuracy"] == 75.0 and scores["invalid"] == 25.0


def test_copa_accepts_the_alternative_text() -> None:
    copa = make("copa", data_dir="builtin")
    examples = copa.load("validation", grouped=True)
    predictions = ["Water flowed from the spout.", "choice2", "choice1", "she lost her appetite"]
    assert copa.score(predictions, examples)["accuracy"] == 75.0  # the second is wrong (gold choice1)


@pytest.mark.parametrize("verbalizers, message", [(["yes"], "has 1 entries"), (["True", "False"], "names two labels"),
                                                  (["a", "A"], "names two labels")])
def test_bad_verbalizers_are_refused(verbalizers: list[str], message: str) -> None:
    with pytest.raises(PeftrunError, match=message):
        make("boolq", data_dir="builtin", verbalizers=verbalizers)


def test_cb_reports_macro_f1() -> None:
    cb = make("cb", data_dir="builtin")
    examples = cb.load("validation", grouped=True)  # entailment, contradiction, neutral, entailment
    scores = cb.score(["entailment", "entailment", "neutral", "neutral"], examples)
    assert scores["accuracy"] == 50.0
    # entailment: tp 1 fp 1 fn 1 -> 1/2; contradiction: tp 0 -> 0; neutral: tp 1 fp 1 fn 0 -> 2/3
    assert scores["macro_f1"] == pytest.approx(100 * (1 / 2 + 0 + 2 / 3) / 3)


def test_task_metrics_selects_and_orders() -> None:
    cb = make("cb", data_dir="builtin", metrics=["macro_f1", "accuracy"])
    examples = cb.load("validation", grouped=True)
    assert list(cb.score([e.target for e in examples], examples)) == ["macro_f1", "accuracy"]
    with pytest.raises(PeftrunError, match="not a non-empty subset of \\[accuracy, macro_f1, invalid\\]"):
        make("cb", data_dir="builtin", metrics=["f1"]).score([e.target for e in examples], examples)


def test_multirc_groups_answers_by_question() -> None:
    multirc = make("multirc", data_dir="builtin")
    examples = multirc.load("validation", grouped=True)
    assert [e.meta["question"] for e in examples] == ["0-0", "0-0", "0-0", "0-1", "0-1"]
    scores = multirc.score(["True", "False", "False", "True", "False"], examples)  # one miss in question 0-0
    assert scores["em"] == 50.0 and scores["f1a"] == pytest.approx(100 * 4 / 5)


def test_record_grouping_candidates_and_scoring() -> None:
    record = make("record", data_dir="builtin")
    grouped = record.load("validation", grouped=True)
    assert [e.references for e in grouped] == [("Diego Costa",), ("Olimpija Ljubljana",)]
    meta = grouped[0].meta
    assert meta["entities"][meta["label"]] == "Diego Costa"
    assert meta["candidates"][meta["label"]].startswith("Diego Costa scored")
    assert record.score(["Diego Costa", "Chelsea"], grouped) == {"em": 50.0, "f1": 50.0}
    with pytest.raises(PeftrunError, match="does not apply"):
        make("record", data_dir="builtin", verbalizers=["x"])


def test_test_split_is_refused() -> None:
    with pytest.raises(PeftrunError, match="test labels are hidden"):
        make("rte", data_dir="builtin").load("test", grouped=True)


# -- loaders --------------------------------------------------------------------------------------------------
def test_local_files_skip_malformed_rows_with_one_warning(tmp_path: Path, caplog) -> None:
    folder = tmp_path / "RTE"
    folder.mkdir()
    rows = [{"idx": 0, "premise": "A man sleeps.", "hypothesis": "A man rests.", "label": "entailment"},
            {"idx": 1, "premise": "A man sleeps.", "label": "entailment"},  # no hypothesis
            {"idx": 2, "premise": "A man sleeps.", "hypothesis": "He runs.", "label": "contradiction"},  # unknown
            {"idx": 3, "premise": "It rains.", "hypothesis": "It is dry.", "label": "not_entailment"}]
    (folder / "val.jsonl").write_text("\n".join([*map(json.dumps, rows), "{broken"]) + "\n")
    with caplog.at_level(logging.WARNING):
        examples = make("rte", data_dir=str(tmp_path)).load("validation", grouped=True)  # the parent folder works
    assert [e.id for e in examples] == ["validation-0", "validation-3"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "skipped 3 of 5" in warnings[0]
    with pytest.raises(PeftrunError, match="missing file .*train.jsonl"):
        make("rte", data_dir=str(tmp_path)).load("train", grouped=False)


def test_hub_fails_fast_offline(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PeftrunError, match="HF_HUB_OFFLINE is set and it is not in the datasets cache; set task.data_dir"):
        make("rte", hub_id="aps/super_glue:rte").load("validation", grouped=True)


def test_hub_rows_convert_to_the_official_schema() -> None:
    multirc = make("multirc", data_dir="builtin")
    hub = [{"paragraph": "P.", "question": "Q?", "answer": a, "idx": {"paragraph": 0, "question": 0, "answer": i},
            "label": label} for i, (a, label) in enumerate([("yes", 1), ("no", 0)])]
    rows = multirc.from_hub(hub)
    assert [len(q["answers"]) for q in rows[0]["passage"]["questions"]] == [2]
    record = make("record", data_dir="builtin")
    text = "Ann met Bob."
    hub = [{"passage": text, "query": "@placeholder met Bob.", "answers": ["Ann"], "idx": {"passage": 0, "query": 0},
            "entity_spans": {"text": ["Ann", "Bob"], "start": [0, 8], "end": [3, 11]}}]  # hub ends are exclusive
    example = record.examples_of(record.from_hub(hub)[0], "validation-0", grouped=True)[0]
    assert example.meta["entities"] == ["Ann", "Bob"] and example.meta["label"] == 0
    wsc = make("wsc", data_dir="builtin")
    hub = [{"text": "Ann said she left.", "span1_index": 0, "span1_text": "Ann", "span2_index": 2, "span2_text": "she",
            "idx": 0, "label": 1}]
    example = wsc.examples_of(wsc.from_hub(hub)[0], "validation-0", grouped=True)[0]
    assert "*she*" in example.source and example.target == "True"


SHARED_VALIDATION = {"boolq": 3270, "cb": 56, "copa": 100, "rte": 277, "wic": 638, "wsc": 104, "multirc": 4848}


@pytest.mark.parametrize("name", sorted(SHARED_VALIDATION))
def test_shared_fewglue_validation_sets(name: str) -> None:
    folder = require_data("superglue", "fewglue")
    sg = make(name, data_dir=str(folder))
    examples = sg.load("validation", grouped=True)
    assert len(examples) == SHARED_VALIDATION[name]
    assert len(sg.load("train", grouped=False)) >= 32
    primary = next(iter(sg.score([e.target for e in examples], examples).values()))
    assert primary == 100.0


def test_shared_record_dev32() -> None:
    folder = require_data("superglue", "fewglue", "ReCoRD")
    record = make("record", data_dir=str(folder))
    grouped = record.load("dev32", grouped=True)
    assert len(grouped) == 32
    assert all(e.meta["label"] >= 0 for e in grouped)  # a gold answer is always among the passage entities
    assert len(record.load("train", grouped=False)) >= 32


def test_runs_end_to_end_on_a_tiny_backbone(tmp_path: Path) -> None:
    """`peftrun task=rte task.data_dir=builtin` trains, generates and scores offline (the text-to-text path)."""
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "peftrun", "backbone=tiny-t5", "method=lora", "task=rte", "task.data_dir=builtin",
         "trainer.max_steps=2", "trainer.batch_size=2", "task.generation.max_new_tokens=4", f"hydra.run.dir={run_dir}"],
        cwd=ROOT, env=dict(os.environ, HF_HUB_OFFLINE="1"), capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((run_dir / "results.json").read_text())
    assert record["status"] == "complete" and set(record["metrics"]["validation"]) == {"accuracy", "invalid"}
    assert record["data"]["validation"]["examples"] == 4
    lines = (run_dir / "predictions.jsonl").read_text().splitlines()
    assert [json.loads(line)["references"] for line in lines] == [["entailment"], ["not_entailment"]] * 2
