"""`peftrun-score` as a user runs it (subprocesses), checked against sacrebleu called directly on the same strings,
and the E2E challenge's published BLEU of two systems reproduced from their output files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from sacrebleu.metrics import BLEU, CHRF

from peftrun.config import TaskConfig
from peftrun.errors import PeftrunError
from peftrun.score import read_predictions, score_file
from peftrun.tasks import build_task
from tests.conftest import ROOT, require_data


def entry_point(name: str) -> list[str]:
    """The installed console script (what users type), else `python -m` of its module."""
    script = Path(sys.executable).parent / name
    return [str(script)] if script.exists() else [sys.executable, "-m", name.replace("-", ".")]


def peftrun_score(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    return subprocess.run([*entry_point("peftrun-score"), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def synthetic_examples(split: str = "validation") -> list:
    return build_task(OmegaConf.structured(TaskConfig(name="synthetic"))).load(split, grouped=True)


def hand_made_predictions(examples: list) -> list[str]:
    """Exact references, a changed word, a case change and nonsense, so BLEU is neither 0 nor 100."""
    out = []
    for i, e in enumerate(examples):
        ref = e.references[i % 3]
        out.append([ref, ref.replace(" is ", " was "), ref.upper(), "no idea"][i % 4])
    return out


def streams_of(examples: list) -> list[list[str | None]]:
    """sacrebleu reference streams written out here: stream k = k-th reference of every input, None where absent."""
    width = max(len(e.references) for e in examples)
    return [[e.references[k] if k < len(e.references) else None for e in examples] for k in range(width)]


def test_text_predictions_equal_sacrebleu_and_write_json(tmp_path: Path) -> None:
    examples = synthetic_examples()
    predictions = hand_made_predictions(examples)
    (tmp_path / "preds.txt").write_text("\n".join(predictions) + "\n", encoding="utf-8")
    proc = peftrun_score("task=synthetic", "split=validation", "predictions=preds.txt", "output=out/scores.json",
                         cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    written = json.loads((tmp_path / "out" / "scores.json").read_text())
    streams = streams_of(examples)
    assert written["metrics"]["bleu"] == pytest.approx(BLEU(lowercase=True).corpus_score(predictions, streams).score, abs=1e-9)
    assert written["metrics"]["chrf"] == pytest.approx(CHRF(lowercase=True).corpus_score(predictions, streams).score, abs=1e-9)
    assert 20 < written["metrics"]["bleu"] < 90
    assert written["task"] == "synthetic" and written["split"] == "validation"
    assert "bleu" in proc.stdout  # the rich table
    # scoring writes nothing else: no outputs/, no .hydra/, no log file, no temporary file left
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == ["out", "out/scores.json", "preds.txt"]


def test_jsonl_in_any_order_gives_the_same_numbers(tmp_path: Path) -> None:
    examples = synthetic_examples("test")
    predictions = hand_made_predictions(examples)
    (tmp_path / "preds.txt").write_text("\n".join(predictions), encoding="utf-8")  # no final newline
    lines = [json.dumps({"input": e.source, "prediction": p}) for e, p in zip(examples, predictions, strict=True)]
    lines[0] = json.dumps({"id": examples[0].id, "prediction": predictions[0]})  # by id works too
    lines.append(json.dumps({"split": "validation", "input": examples[1].source, "prediction": "other split"}))
    (tmp_path / "preds.jsonl").write_text("\n".join(reversed(lines)) + "\n", encoding="utf-8")
    for name in ("preds.txt", "preds.jsonl"):
        proc = peftrun_score("task=synthetic", "split=test", f"predictions={name}", f"output={name}.json", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
    text = json.loads((tmp_path / "preds.txt.json").read_text())["metrics"]
    jsonl = json.loads((tmp_path / "preds.jsonl.json").read_text())["metrics"]
    assert text == jsonl
    assert text["bleu"] == pytest.approx(BLEU(lowercase=True).corpus_score(predictions, streams_of(examples)).score)


def test_wrong_line_count_exits_2_with_one_line(tmp_path: Path) -> None:
    predictions = hand_made_predictions(synthetic_examples())[:-1]
    (tmp_path / "short.txt").write_text("\n".join(predictions) + "\n", encoding="utf-8")
    proc = peftrun_score("task=synthetic", "split=validation", "predictions=short.txt", "output=never.json", cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "99 lines" in lines[0] and "100 examples" in lines[0]
    assert not (tmp_path / "never.json").exists()


def test_jsonl_unmatched_and_missing_are_counted(tmp_path: Path) -> None:
    examples = synthetic_examples()
    lines = [json.dumps({"input": e.source, "prediction": "x"}) for e in examples[:-2]]
    lines.insert(2, json.dumps({"input": "name : Nowhere | Type : pub", "prediction": "x"}))
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(PeftrunError, match=r"1 of 99 lines match no example.*line 3: .*Nowhere.*2 of 100 examples have no prediction"):
        read_predictions(path, examples, "task synthetic split validation")
    path.write_text('{"input": "a"}\n', encoding="utf-8")
    with pytest.raises(PeftrunError, match='line 1 has no string "prediction"'):
        read_predictions(path, examples, "here")
    with pytest.raises(PeftrunError, match="predictions=FILE"):
        read_predictions(tmp_path / "absent.txt", examples, "here")


def test_e2e_ragged_references_jsonl_by_mr(tmp_path: Path) -> None:
    folder = require_data("e2e")
    examples = build_task(OmegaConf.structured(TaskConfig(name="e2e", data_dir=str(folder)))).load("validation", True)
    assert len({len(e.references) for e in examples}) > 1  # ragged
    predictions = [e.references[-1] if i % 2 else e.references[0].lower() for i, e in enumerate(examples)]
    lines = [json.dumps({"input": e.meta["mr"], "prediction": p}) for e, p in zip(examples, predictions, strict=True)]
    (tmp_path / "p.jsonl").write_text("\n".join(lines[::-1]), encoding="utf-8")
    proc = peftrun_score("task=e2e", f"task.data_dir={folder}", "split=validation", "predictions=p.jsonl",
                         "output=s.json", "task.metrics=[bleu]", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    got = json.loads((tmp_path / "s.json").read_text())["metrics"]
    assert got == {"bleu": pytest.approx(BLEU(lowercase=True).corpus_score(predictions, streams_of(examples)).score, abs=1e-9)}


@pytest.mark.parametrize("system,published", [("tgen", 65.93), ("slug", 66.19)])
def test_published_e2e_test_bleu_from_system_outputs(system: str, published: float) -> None:
    """E2E challenge results (Dušek et al. 2020): TGen baseline 65.93, SLUG (winner) 66.19 test BLEU."""
    folder = require_data("e2e")
    cfg = OmegaConf.merge(OmegaConf.structured(TaskConfig), OmegaConf.load(ROOT / "conf" / "task" / "e2e.yaml"))
    cfg.data_dir, cfg.metrics = str(folder), ["bleu"]
    scores = score_file(cfg, None, "test", str(folder / "system_outputs" / f"{system}.tsv"))
    assert scores["bleu"] == pytest.approx(published, abs=0.5)
    assert round(scores["bleu"], 2) == published  # in fact identical to the published number


def test_tsv_system_output_through_the_command(tmp_path: Path) -> None:
    folder = require_data("e2e")
    proc = peftrun_score("task=e2e", f"task.data_dir={folder}", "split=test", "task.metrics=[bleu]",
                         f"predictions={folder / 'system_outputs' / 'tgen.tsv'}", "output=tgen.json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert round(json.loads((tmp_path / "tgen.json").read_text())["metrics"]["bleu"], 2) == 65.93


# -- hostile prediction files (issue 11) ------------------------------------------------------------------------
def test_non_utf8_predictions_are_one_error_naming_the_line(tmp_path: Path) -> None:
    examples = synthetic_examples()
    path = tmp_path / "p.txt"
    path.write_bytes(b"first\nsecond \xff\xfe\n")
    with pytest.raises(PeftrunError, match=rf"{path} line 2: the predictions file is not UTF-8"):
        read_predictions(path, examples, "here")


def test_a_duplicated_example_id_is_an_error_naming_it(tmp_path: Path) -> None:
    """One prediction line may score one example: the same id twice is refused, even when the examples share an
    input (where an input-keyed line serves every example of that input)."""
    examples = synthetic_examples()
    lines = [json.dumps({"id": e.id, "prediction": e.references[0]}) for e in examples]
    lines.append(json.dumps({"id": examples[3].id, "prediction": "again"}))
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(PeftrunError, match=rf"line {len(lines)}: example id '{examples[3].id}' was already predicted "
                                           "on line 4"):
        read_predictions(path, examples, "here")
    # an id names its example even when the line also carries a shared input: one line never fills two examples
    twins = [examples[0], type(examples[0])("other-id", examples[0].source, "t", ("t",), {})]
    path.write_text(json.dumps({"id": examples[0].id, "input": examples[0].source, "prediction": "p"}) + "\n")
    with pytest.raises(PeftrunError, match="1 of 2 examples have no prediction .*other-id"):
        read_predictions(path, twins, "here")


def test_output_onto_a_directory_is_one_error_and_leaves_no_temp(tmp_path: Path) -> None:
    predictions = hand_made_predictions(synthetic_examples())
    (tmp_path / "p.txt").write_text("\n".join(predictions) + "\n", encoding="utf-8")
    (tmp_path / "out").mkdir()
    proc = peftrun_score("task=synthetic", "split=validation", "predictions=p.txt", "output=out", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: output=out is a directory"), proc.stderr
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["out", "p.txt"]


def test_ter_is_skipped_and_recorded_for_degenerate_lengths(caplog: pytest.LogCaptureFixture) -> None:
    from sacrebleu.metrics import TER

    from peftrun.metrics.generation import TER_MAX_RATIO, TER_SLACK_WORDS, generation_scores

    refs = [["the eagle is a pub"], ["a cheap french restaurant"]]
    normal = ["the eagle is a cheap pub", "french restaurant"]
    got = generation_scores(normal, refs)
    assert got["ter"] == pytest.approx(TER().corpus_score(normal, [[r[0] for r in refs]]).score)
    limit = TER_MAX_RATIO * 5 + TER_SLACK_WORDS
    at_limit = [" ".join(["pub"] * limit), "french restaurant"]
    assert "ter" in generation_scores(at_limit, refs, metrics=("ter",))
    over = [" ".join(["pub"] * (limit + 1)), "french restaurant"]
    got = generation_scores(over, refs)
    assert "ter" not in got and got["ter_skipped_long"] == 1.0 and "bleu" in got and "chrf" in got
    assert "TER not computed: 1 of 2 predictions" in caplog.text
