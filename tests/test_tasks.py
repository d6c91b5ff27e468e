"""Table-to-text tasks: counts from the official files (read independently here), linearisation, caps, malformed
rows, missing files, offline hub, the synthetic task, and that every conf/task YAML is exactly a TaskConfig."""

from __future__ import annotations

import csv
import json
import logging
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from peftrun.config import TaskConfig
from peftrun.errors import PeftrunError
from peftrun.metrics.generation import generation_scores
from peftrun.tasks import build_task
from peftrun.tasks.synthetic import build_splits
from tests.conftest import ROOT, require_data


def task(name: str, data_dir: Path | str | None = None, **overrides) -> object:
    cfg = OmegaConf.structured(TaskConfig(name=name, data_dir=None if data_dir is None else str(data_dir), **overrides))
    return build_task(cfg)


def csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


# ---------------------------------------------------------------- E2E


@pytest.mark.parametrize("split,file", [("validation", "devset.csv"), ("test", "testset_w_refs.csv")])
def test_e2e_groups_by_distinct_mr(split: str, file: str) -> None:
    folder = require_data("e2e")
    rows = csv_rows(folder / file)
    distinct = list(dict.fromkeys(r["mr"] for r in rows))
    grouped = task("e2e", folder).load(split, grouped=True)
    assert len(grouped) == len(distinct)
    assert [e.meta["mr"] for e in grouped] == distinct  # order of first appearance
    assert sum(len(e.references) for e in grouped) == len(rows)
    assert len({e.id for e in grouped}) == len(grouped)
    flat = task("e2e", folder).load(split, grouped=False)
    assert [e.target for e in flat] == [r["ref"].strip() for r in rows]  # csv rows are contiguous per MR


def test_e2e_dev_counts_match_the_data_readme() -> None:
    grouped = task("e2e", require_data("e2e")).load("validation", grouped=True)
    assert len(grouped) == 547
    assert sum(len(e.references) for e in grouped) == 4672


def test_e2e_linearisation_follows_li_and_liang() -> None:
    first = task("e2e", require_data("e2e")).load("validation", grouped=True)[0]
    assert first.meta["mr"] == "name[Alimentum], area[city centre], familyFriendly[no]"
    assert first.source == "name : Alimentum | area : city centre | family friendly : no"
    example = next(e for e in task("e2e", require_data("e2e")).load("test", grouped=True)
                   if "priceRange" in e.meta["mr"] and "eatType" in e.meta["mr"])
    assert "Type : " in example.source and "price : " in example.source and "[" not in example.source


def test_e2e_caps_apply_after_grouping() -> None:
    folder = require_data("e2e")
    t = task("e2e", folder, max_eval_examples=10, max_train_examples=7)
    assert len(t.load("validation", grouped=True)) == 10
    assert len(t.load("validation", grouped=True)[9].references) > 1
    assert len(t.load("train", grouped=False)) == 7


def test_e2e_training_pairs_follow_the_file_rows_so_a_cap_takes_the_first_rows() -> None:
    """The training file repeats its MRs all over (not contiguously, as dev and test do): one example per row,
    in row order, so max_train_examples=160 trains on the first 160 rows (156 distinct MRs), not on the first
    160 references of the first MRs in group order (13 MRs)."""
    folder = require_data("e2e")
    rows = [r for r in csv_rows(folder / "trainset.csv")[:400] if r["mr"].strip() and r["ref"].strip()][:160]
    flat = task("e2e", folder, max_train_examples=160).load("train", grouped=False)
    assert [(e.meta["mr"], e.target) for e in flat] == [(r["mr"].strip(), r["ref"].strip()) for r in rows]
    assert len({e.source for e in flat}) == len({r["mr"] for r in rows}) > 100
    assert len({e.id for e in flat}) == 160


def test_e2e_malformed_rows_are_skipped_with_one_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rows = [
        ("name[A], eatType[pub]", "A is a pub."),
        ("", "no mr"),                      # empty mr
        ("name[B], eatType[pub]", "  "),    # empty ref
        ("name[C, eatType[pub]", "broken"),  # unparsable mr
        ("name[A], eatType[pub]", "There is a pub called A."),
        ("name[D], food[]", "empty value"),  # empty attribute value
    ]
    with (tmp_path / "devset.csv").open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["mr", "ref"])
        writer.writerows(rows)
    with caplog.at_level(logging.WARNING):
        grouped = task("e2e", tmp_path).load("validation", grouped=True)
    assert [(e.source, e.references) for e in grouped] == [("name : A | Type : pub", ("A is a pub.", "There is a pub called A."))]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "skipped 4 of 6" in warnings[0].getMessage()


def test_missing_files_name_the_file_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(PeftrunError, match=r"devset\.csv.*task\.data_dir"):
        task("e2e", tmp_path).load("validation", grouped=True)
    with pytest.raises(PeftrunError, match=r"not a directory.*task\.data_dir"):
        task("e2e", tmp_path / "nope").load("validation", grouped=True)
    with pytest.raises(PeftrunError, match=r"testdata_with_lex\.xml"):
        task("webnlg", tmp_path).load("test", grouped=True)
    with pytest.raises(PeftrunError, match="unknown split 'dev'"):
        task("e2e", tmp_path).load("dev", grouped=True)


def test_hub_fails_fast_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for name in ("e2e", "dart", "webnlg"):
        cfg = OmegaConf.merge(OmegaConf.structured(TaskConfig), OmegaConf.load(ROOT / "conf" / "task" / f"{name}.yaml"))
        with pytest.raises(PeftrunError, match=r"HF_HUB_OFFLINE.*task\.data_dir=DIR") as err:
            build_task(cfg).load("validation", grouped=True)
        assert "\n" not in str(err.value)


# ---------------------------------------------------------------- DART


def test_dart_counts_from_the_official_files() -> None:
    folder = require_data("dart")
    dev = json.loads((folder / "dart-v1.1.1-full-dev.json").read_text(encoding="utf-8"))
    grouped = task("dart", folder).load("validation", grouped=True)
    assert len(grouped) == len(dev) == 2768  # one example per entry
    assert sum(len(e.references) for e in grouped) == sum(len(d["annotations"]) for d in dev) == 6980
    entries = list(ET.parse(folder / "dart-v1.1.1-full-test.xml").getroot().iter("entry"))
    nonempty = sum(1 for e in entries for lex in e.findall("lex") if (lex.text or "").strip())
    test = task("dart", folder).load("test", grouped=True)
    assert len(test) == len(entries) == 5097
    assert sum(len(e.references) for e in test) == nonempty
    assert len(task("dart", folder).load("test", grouped=False)) == nonempty


def test_dart_linearisation_and_missing_train() -> None:
    folder = require_data("dart")
    first = task("dart", folder).load("validation", grouped=True)[0]
    assert first.source == "Mars Hill College : joined : 1973 | Mars Hill College : location : Mars Hill, North Carolina"
    with pytest.raises(PeftrunError, match=r"dart-v1\.1\.1-full-train\.json"):
        task("dart", folder).load("train", grouped=False)


def test_dart_malformed_entries_are_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    entries = [
        {"tripleset": [["A", "R", "B"]], "annotations": [{"source": "x", "text": "A r B."}, {"source": "x", "text": ""}]},
        {"tripleset": [["A", "R"]], "annotations": [{"source": "x", "text": "two-part triple"}]},
        {"tripleset": [["C", "R", "D"]], "annotations": [{"source": "x", "text": " "}]},
    ]
    (tmp_path / "dart-v1.1.1-full-dev.json").write_text(json.dumps(entries), encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        grouped = task("dart", tmp_path).load("validation", grouped=True)
    assert [(e.source, e.references) for e in grouped] == [("A : r : B", ("A r B.",))]
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(messages) == 1 and "skipped 2 of 3 entries" in messages[0] and "2 empty references" in messages[0]


# ---------------------------------------------------------------- WebNLG 2017


def _entries(path: Path) -> list[ET.Element]:
    return list(ET.parse(path).getroot().iter("entry"))


def test_webnlg_test_set_and_seen_unseen() -> None:
    folder = require_data("webnlg2017")
    full = _entries(folder / "testdata_with_lex.xml")
    unseen_file = _entries(folder / "testdata_unseen_with_lex.xml")
    t = task("webnlg", folder)
    test = t.load("test", grouped=True)
    assert len(test) == len(full) == 1862
    assert sum(len(e.references) for e in test) == sum(len(e.findall("lex")) for e in full)
    unseen = t.load("test_unseen", grouped=True)
    assert len(unseen) == len(unseen_file) == 891
    # the unseen split is exactly the entries of testdata_unseen_with_lex.xml, in order
    assert [e.meta["triples"] for e in unseen] == [
        [[p.strip() for p in m.text.split(" | ")] for m in e.findall("modifiedtripleset/mtriple")] for e in unseen_file
    ]
    assert len(t.load("test_seen", grouped=True)) == 1862 - 891
    assert test[0].source == "Abilene_Regional_Airport : cityServed : Abilene,_Texas"


@pytest.mark.parametrize("split,folder_name", [("train", "train"), ("validation", "dev")])
def test_webnlg_train_dev_keep_good_lexicalisations(split: str, folder_name: str) -> None:
    folder = require_data("webnlg2017")
    entries = [e for f in sorted((folder / folder_name).glob("*triples/*.xml")) for e in _entries(f)]
    good = [[lex.text for lex in e.findall("lex") if lex.get("comment") == "good"] for e in entries]
    grouped = task("webnlg", folder).load(split, grouped=True)
    assert len(grouped) == sum(1 for g in good if g)
    assert sum(len(e.references) for e in grouped) == sum(len(g) for g in good)


def test_webnlg_score_reports_seen_and_unseen() -> None:
    t = task("webnlg", require_data("webnlg2017"), metrics=["bleu"])  # sacrebleu's TER would take minutes
    test = t.load("test", grouped=True)
    predictions = [e.references[-1] if i % 3 else "something else entirely" for i, e in enumerate(test)]
    scores = t.score(predictions, test)
    seen = [i for i, e in enumerate(test) if e.meta["seen"]]
    unseen = [i for i, e in enumerate(test) if not e.meta["seen"]]
    for name, idx in (("bleu_seen", seen), ("bleu_unseen", unseen)):
        ref = generation_scores([predictions[i] for i in idx], [test[i].references for i in idx], style="webnlg",
                                metrics=("bleu",))
        assert scores[name] == pytest.approx(ref["bleu"], abs=1e-9)
    everything = generation_scores(predictions, [e.references for e in test], style="webnlg", metrics=("bleu",))
    assert scores["bleu"] == pytest.approx(everything["bleu"], abs=1e-9)
    assert set(scores) == {"bleu", "bleu_seen", "bleu_unseen"}
    assert min(scores["bleu_seen"], scores["bleu_unseen"]) < scores["bleu"] < max(scores["bleu_seen"], scores["bleu_unseen"])


# ---------------------------------------------------------------- synthetic


def test_synthetic_is_deterministic_and_disjoint() -> None:
    first, second = build_splits(), build_splits()
    assert first == second
    sizes = {split: len(groups) for split, groups in first.items()}
    assert sizes == {"train": 700, "validation": 100, "test": 100}
    keys = {split: {g.key for g in groups} for split, groups in first.items()}
    assert not keys["train"] & keys["validation"] and not keys["train"] & keys["test"] and not keys["validation"] & keys["test"]
    t = task("synthetic")
    grouped = t.load("validation", grouped=True)
    assert all(len(e.references) == 3 and len(set(e.references)) == 3 for e in grouped)
    assert all(e.source.split(" | ")[0].removeprefix("name : ") in e.target for e in grouped)
    assert len(t.load("train", grouped=False)) == 2100


def test_synthetic_score_perfect_and_wrong() -> None:
    t = task("synthetic", bleu_lowercase=True, metrics=["bleu", "chrf"])
    grouped = t.load("test", grouped=True)
    assert t.score([e.references[1] for e in grouped], grouped)["bleu"] == pytest.approx(100.0)
    assert t.score(["nothing" for _ in grouped], grouped)["bleu"] < 1
    with pytest.raises(PeftrunError, match="data_dir=null"):
        task("synthetic", "/tmp").load("test", grouped=True)


def test_metrics_knob_selects_and_validates() -> None:
    grouped = task("synthetic").load("test", grouped=True)[:5]
    predictions = [e.references[0] for e in grouped]
    assert set(task("synthetic", metrics=["bleu"]).score(predictions, grouped)) == {"bleu"}
    assert set(task("synthetic").score(predictions, grouped)) == {"bleu", "chrf", "ter"}  # null = all
    with pytest.raises(PeftrunError, match="rouge"):
        task("synthetic", metrics=["bleu", "rouge"]).score(predictions, grouped)
