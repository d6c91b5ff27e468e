"""`peftrun-report` over a tree of run records: numbers, seed statistics, failures, the plot.

One real run of the CLI (tiny GPT-2 + LoRA, 2 steps) gives a genuine results.json; the other records of the
tree are copies of it with fields edited in JSON, as a sweep would have produced them:
  - seeds 1 and 2 of the same config: trainer.seed edited, BLEU/chrF/train time set to chosen values
    (the real run is seed 42 of that group, its numbers untouched);
  - method.rank=8 (and its interpolated delta rank): a variant of the same method, trainable count doubled;
  - method "full": trainable = backbone, 100 %;
  - a dry run: status dry_run, no metrics, no train time;
  - a failed run: status failed with an error message; and one unreadable results.json.
Expected values are recomputed here from those records with statistics.mean / statistics.stdev.
"""

from __future__ import annotations

import copy
import csv
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

TINY = ["trainer.max_steps=2", "task.max_train_examples=16", "task.max_eval_examples=4",
        "task.generation.max_new_tokens=4"]


def _env() -> dict[str, str]:
    return dict(os.environ, HF_HUB_OFFLINE="1", COLUMNS="200")


@pytest.fixture(scope="module")
def real_record(tmp_path_factory: pytest.TempPathFactory) -> dict:
    run_dir = tmp_path_factory.mktemp("real") / "run"
    proc = subprocess.run([sys.executable, "-m", "peftrun", *TINY, f"hydra.run.dir={run_dir}"], cwd=ROOT,
                          env=_env(), capture_output=True, text=True, timeout=300)
    if proc.returncode != 0 or not (run_dir / "results.json").exists():
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        pytest.skip(f"the peftrun CLI does not complete a tiny run yet: {last}")
    record = json.loads((run_dir / "results.json").read_text())
    assert record["status"] == "complete" and record["metrics"]["validation"]
    return record


def _put(root: Path, name: str, record: dict) -> dict:
    run_dir = root / name
    run_dir.mkdir(parents=True)
    record["run_dir"] = str(run_dir)
    (run_dir / "results.json").write_text(json.dumps(record))
    return record


def _variant(base: dict, **edits) -> dict:
    record = copy.deepcopy(base)
    for dotted, value in edits.items():
        node = record
        *parents, leaf = dotted.split("/")
        for key in parents:
            node = node[key]
        node[leaf] = value
    return record


@pytest.fixture(scope="module")
def tree(real_record: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("sweep")
    base = real_record
    runs = {"seed42": _put(root, "multirun/day/0_tiny-gpt2_lora_synthetic", copy.deepcopy(base))}
    for num, (seed, bleu, chrf, train_s) in enumerate([(1, 12.5, 20.25, 3.0), (2, 17.25, 30.5, 5.5)], start=1):
        runs[f"seed{seed}"] = _put(root, f"multirun/day/{num}_tiny-gpt2_lora_synthetic", _variant(
            base, **{"config/trainer/seed": seed, "seed": seed, "metrics/validation/bleu": bleu,
                     "metrics/validation/chrf": chrf, "timings/train_s": train_s}))
    rank8 = _variant(base, **{"config/method/rank": 8, "metrics/validation/bleu": 21.0})
    rank8["config"]["method"]["deltas"][0]["rank"] = 8
    rank8["params"].update(trainable=2 * base["params"]["trainable"], saved=2 * base["params"]["saved"],
                           trainable_pct=2 * base["params"]["trainable_pct"])
    runs["rank8"] = _put(root, "multirun/day/10_tiny-gpt2_lora_synthetic", rank8)
    backbone = base["params"]["backbone"]
    runs["full"] = _put(root, "other/full_run", _variant(
        base, **{"config/method/name": "full", "metrics/validation/bleu": 30.0, "params/trainable": backbone,
                 "params/saved": backbone, "params/trainable_pct": 100.0}))
    runs["dry"] = _put(root, "other/deeper/dry", _variant(
        base, **{"status": "dry_run", "config/trainer/dry_run": True, "metrics": {}, "timings": {"setup_s": 1.0}}))
    runs["failed"] = _put(root, "multirun/day/11_tiny-gpt2_lora_synthetic", _variant(
        base, **{"status": "failed", "config/trainer/seed": 3, "metrics": {},
                 "error": "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB"}))
    (root / "other" / "broken").mkdir()
    (root / "other" / "broken" / "results.json").write_text("{not json")
    return {"root": root, "runs": runs}


@pytest.fixture(scope="module")
def report(tree: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("report")
    proc = subprocess.run([sys.executable, "-m", "peftrun.report", str(tree["root"]), "--out", str(out)], cwd=ROOT,
                          env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out / "report.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    return {"out": out, "stdout": proc.stdout, "rows": rows}


def _find(rows: list[dict], **match) -> dict:
    found = [row for row in rows if all(row[k] == v for k, v in match.items())]
    assert len(found) == 1, (match, found)
    return found[0]


def test_seed_group_mean_and_std(tree: dict, report: dict) -> None:
    runs = tree["runs"]
    group = [runs["seed42"], runs["seed1"], runs["seed2"]]
    row = _find(report["rows"], method="lora", status="complete", variant="method.rank=4")
    assert int(row["runs"]) == 3 and row["seeds"] == "42;1;2" and row["split"] == "validation"
    for metric in group[0]["metrics"]["validation"]:
        values = [r["metrics"]["validation"][metric] for r in group]
        assert float(row[metric]) == statistics.mean(values), metric
        assert float(row[f"{metric}_std"]) == pytest.approx(statistics.stdev(values), rel=1e-12, abs=1e-12), metric
    assert float(row["bleu_std"]) > 0  # the edited seeds really differ
    train = [r["timings"]["train_s"] for r in group]
    assert float(row["train_s"]) == statistics.mean(train)
    assert float(row["train_s_std"]) == pytest.approx(statistics.stdev(train), rel=1e-12)
    wall = [r["timings"]["total_s"] for r in group]  # the whole job, start to final record
    assert float(row["wall_s"]) == statistics.mean(wall)
    assert row["run_dirs"].split(";") == [r["run_dir"] for r in group]


def test_accounting_columns_equal_the_records(tree: dict, report: dict) -> None:
    runs = tree["runs"]
    for name, match in [("seed42", {"variant": "method.rank=4"}), ("rank8", {"variant": "method.rank=8"}),
                        ("full", {"method": "full"})]:
        record = runs[name]
        row = _find(report["rows"], status="complete", **match)
        params = record["params"]
        assert float(row["trainable_pct"]) == params["trainable_pct"]
        assert int(float(row["trainable"])) == params["trainable"]
        assert int(float(row["saved"])) == params["saved"]
        assert record["config"]["backbone"]["dtype"] == "float32" and row["dtype"] == "float32"
        assert float(row["saved_mb"]) == pytest.approx(params["saved"] * 4 / 1e6)
    single = _find(report["rows"], status="complete", variant="method.rank=8")
    assert int(single["runs"]) == 1 and single["bleu_std"] == ""
    assert float(single["bleu"]) == runs["rank8"]["metrics"]["validation"]["bleu"]
    assert float(_find(report["rows"], method="full")["bleu"]) == 30.0


def test_dry_run_shows_accounting_only(tree: dict, report: dict) -> None:
    row = _find(report["rows"], status="dry_run")
    assert row["bleu"] == "" and row["train_s"] == ""
    assert float(row["trainable_pct"]) == tree["runs"]["dry"]["params"]["trainable_pct"]


def test_failed_and_unreadable_runs_are_listed(tree: dict, report: dict) -> None:
    failed = tree["runs"]["failed"]
    row = _find(report["rows"], status="failed")
    assert row["error"] == failed["error"] and row["run_dirs"] == failed["run_dir"] and row["seeds"] == "3"
    assert _find(report["rows"], status="unreadable")["error"].startswith("unreadable results.json")
    md = (report["out"] / "report.md").read_text()
    assert "Runs without results" in md and failed["error"] in md
    assert "CUDA out of memory" in report["stdout"] and "runs without results" in report["stdout"]
    # 3 seeds + rank 8 + full + dry run grouped into 4 rows; the failed run is in none of them
    results = [r for r in report["rows"] if r["status"] in ("complete", "dry_run")]
    assert len(results) == 4 and all(failed["run_dir"] not in r["run_dirs"] for r in results)


def test_markdown_table_lists_every_metric(tree: dict, report: dict) -> None:
    md = (report["out"] / "report.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| task |"))
    for metric in tree["runs"]["seed42"]["metrics"]["validation"]:
        assert f" {metric} " in header
    mean = statistics.mean([tree["runs"][k]["metrics"]["validation"]["chrf"] for k in ("seed42", "seed1", "seed2")])
    assert f"{mean:.2f} ± " in md


def test_plot_png_size_and_content(report: dict) -> None:
    from matplotlib.image import imread

    from peftrun.plot import figure_pixels

    pixels = imread(report["out"] / "report.png")
    width, height = figure_pixels(1)  # one (task, backbone) panel
    assert pixels.shape[:2] == (height, width)
    rgb = pixels[..., :3]
    assert rgb.std() > 0.02  # not blank
    assert (rgb.min(axis=-1) < 0.5).mean() > 0.005  # dark pixels: axes, markers, labels


def test_two_backbones_make_two_panels(tree: dict, tmp_path: Path) -> None:
    from matplotlib.image import imread

    from peftrun.plot import figure_pixels
    from peftrun.report import write_report

    root = tmp_path / "runs"
    base = tree["runs"]["seed42"]
    _put(root, "a", copy.deepcopy(base))
    _put(root, "b", _variant(base, **{"config/backbone/name": "tiny-gpt2-b", "metrics/validation/bleu": 5.0}))
    written = write_report(root)
    width, height = figure_pixels(2)
    assert imread(written["png"]).shape[:2] == (height, width)
    with open(written["csv"], newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(r["backbone"] for r in rows) == sorted([base["config"]["backbone"]["name"], "tiny-gpt2-b"])


def test_without_matplotlib_the_png_is_skipped(tree: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from peftrun.report import write_report

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    written = write_report(tree["root"], tmp_path)
    assert written["png"] is None and not (tmp_path / "report.png").exists()
    assert "matplotlib is not installed" in (tmp_path / "report.md").read_text()
    assert (tmp_path / "report.csv").exists()


def test_errors_are_one_line_with_exit_2(tree: dict, tmp_path: Path) -> None:
    from peftrun.report import main

    assert main([str(tmp_path)]) == 2  # no results.json at all
    assert main([str(tree["root"]), "--out", str(tmp_path), "--metric", "rouge2"]) == 2
    assert not (tmp_path / "report.csv").exists()


def test_metric_option_and_light_imports(tree: dict, tmp_path: Path) -> None:
    from peftrun.report import main

    assert main([str(tree["root"]), "--out", str(tmp_path), "--metric", "chrf"]) == 0
    assert (tmp_path / "report.png").exists()
    code = "import sys, peftrun.report; print(sorted(m for m in ('torch', 'matplotlib', 'hydra') if m in sys.modules))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "[]", proc.stderr


# -- malformed records and outputs (issue 11): in process, no real run needed ----------------------------------------
GOOD = {"status": "complete", "seed": 1, "metrics": {"validation": {"bleu": 10.0}},
        "params": {"trainable": 10, "saved": 10, "trainable_pct": 0.5, "backbone": 2000}, "timings": {"train_s": 1.0},
        "config": {"task": {"name": "e2e", "eval_splits": ["validation"]}, "backbone": {"name": "tiny"},
                   "method": {"name": "lora"}, "trainer": {"seed": 1}}}
MALFORMED = {
    "metrics-list": {"metrics": []}, "metrics-split-number": {"metrics": {"validation": 3}},
    "params-string": {"params": "many"}, "timings-list": {"timings": [1]}, "task-string": {"config/task": "e2e"},
    "eval-splits-string": {"config/task/eval_splits": "validation"}, "metric-string": {"metrics/validation/bleu": "x"},
    "trainer-list": {"config/trainer": [1]}, "config-list": {"config": [1]}, "record-list": None,
}


def _malformed(name: str) -> object:
    edits = MALFORMED[name]
    if edits is None:
        return [GOOD]
    record = copy.deepcopy(GOOD)
    for dotted, value in edits.items():
        node = record
        *parents, leaf = dotted.split("/")
        for key in parents:
            node = node[key]
        node[leaf] = value
    return record


def test_malformed_records_are_listed_and_the_report_still_written(tmp_path: Path) -> None:
    from peftrun.report import write_report

    (tmp_path / "good").mkdir()
    (tmp_path / "good" / "results.json").write_text(json.dumps(GOOD))
    for name in MALFORMED:
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(_malformed(name)))
    written = write_report(tmp_path, tmp_path / "out")
    with open(written["csv"], newline="") as handle:
        rows = list(csv.DictReader(handle))
    complete = [r for r in rows if r["status"] == "complete"]
    # the string metric value is left out of the numbers; that run (same config) joins the good one's row
    assert len(complete) == 1 and complete[0]["run_dirs"].split(";") == [str(tmp_path / "good"),
                                                                         str(tmp_path / "metric-string")]
    assert float(complete[0]["bleu"]) == 10.0 and complete[0]["bleu_std"] == ""
    unreadable = {Path(r["run_dirs"]).name: r["error"] for r in rows if r["status"] == "unreadable"}
    assert set(unreadable) == set(MALFORMED) - {"metric-string"}, unreadable
    assert all("malformed results.json" in e for e in unreadable.values())


def test_out_onto_a_file_is_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from peftrun.report import main

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "results.json").write_text(json.dumps(GOOD))
    (tmp_path / "taken").write_text("keep me\n")
    assert main([str(tmp_path / "run"), "--out", str(tmp_path / "taken")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --out") and "taken" in lines[0]
    assert (tmp_path / "taken").read_text() == "keep me\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "taken"]
