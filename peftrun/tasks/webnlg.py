"""WebNLG Challenge 2017 (Gardent et al.): DBpedia triple sets -> text, 15 categories (10 seen in training).

Official files (task.data_dir): train/<k>triples/*.xml (6,940 entries), dev/<k>triples/*.xml (872) and
testdata_with_lex.xml, the full test set of 1,862 entries in all 15 categories. testdata_unseen_with_lex.xml is not
read: it is exactly the 891 test entries of the five unseen categories, a subset of testdata_with_lex.xml.
Splits: train, validation, test, plus test_seen (971) and test_unseen (891), the challenge's old-cat/new-cat tracks.
Each example's meta holds eid, category, size and seen (category among the ten training categories).

A grouped example is one entry. References are the <lex> texts; in train/validation only comment="good" ones, as in
LoRA's format_converting_webnlg.py (77 train / 10 dev lexicalisations are "toFix"); every test lex is "good".

Linearisation as Li & Liang (PrefixTuning) and LoRA: the modified triples " | "-joined, each
"subject : property : object" with the DBpedia forms kept (underscores included).

Scoring follows the challenge's evaluation.py + multi-bleu.perl -lc: the "webnlg" BLEU style (lowercased, ASCII,
\\W-split, first three references). score() also reports bleu_seen / bleu_unseen when the examples mix both, so
one evaluation of `test` gives Li & Liang's S / U / A columns.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from peftrun.errors import PeftrunError
from peftrun.tasks.base import Example, register_task
from peftrun.tasks.dart import linearise_triples, split_mtriple
from peftrun.tasks.loading import DataFileError, cached_parse, hub_split, read_xml
from peftrun.tasks.table_to_text import Group, TableToTextTask

log = logging.getLogger(__name__)

# The challenge's new_categories (evaluation.py); the other ten categories are in train/dev.
UNSEEN_CATEGORIES = frozenset({"Artist", "Athlete", "CelestialBody", "MeanOfTransportation", "Politician"})
TEST_FILE = "testdata_with_lex.xml"


def xml_files(data_dir: Path, split: str) -> list[Path]:
    """The XML files of a split, in a fixed order (triple count folder, then file name)."""
    if split in ("train", "validation"):
        folder = data_dir / ("train" if split == "train" else "dev")
        files = sorted(folder.glob("*triples/*.xml"))
        if not files:
            raise PeftrunError(
                f"webnlg: no XML files in {folder}/<k>triples/; set task.data_dir to the WebNLG 2017 folder holding "
                f"train/, dev/ and {TEST_FILE}"
            )
        return files
    path = data_dir / TEST_FILE
    if not path.is_file():
        raise PeftrunError(f"webnlg: missing file {path}; set task.data_dir to the WebNLG 2017 folder holding it")
    return [path]


def entry_group(triples: list[tuple[str, str, str] | None], lexes: list[tuple[str, str]], meta: dict[str, Any],
                good_only: bool) -> Group | None:
    """A Group of one entry, or None when a triple is malformed or no usable lexicalisation is left."""
    texts = [text.strip() for text, comment in lexes if text.strip() and (not good_only or comment == "good")]
    if not triples or any(t is None for t in triples) or not texts:
        return None
    clean = [t for t in triples if t is not None]
    key = "\n".join(" | ".join(t) for t in clean)
    return Group(key, linearise_triples(clean, lower_relation=False), tuple(texts), {"triples": [list(t) for t in clean], **meta})


def parse_files(files: Sequence[Path], split: str) -> list[Group]:
    groups: list[Group] = []
    total = 0
    for path in files:
        entries = list(read_xml(path, "webnlg").iter("entry"))
        if not entries:
            raise DataFileError("webnlg", path, "has no <entry> elements",
                                fix="point task.data_dir at the WebNLG 2017 folder (train/, dev/, test files)")
        for entry in entries:
            total += 1
            category = entry.get("category", "")
            size = entry.get("size") or "0"
            meta = {"eid": entry.get("eid", ""), "category": category, "size": int(size) if size.isdigit() else 0,
                    "seen": category not in UNSEEN_CATEGORIES}
            triples = [split_mtriple(t.text) for t in entry.findall("modifiedtripleset/mtriple")]
            lexes = [(lex.text or "", lex.get("comment", "good")) for lex in entry.findall("lex")]
            group = entry_group(triples, lexes, meta, good_only=split != "test")
            if group is not None:
                groups.append(group)
    if len(groups) < total:
        where = str(files[0].parent.parent if len(files) > 1 else files[0])
        log.warning("skipped %d of %d entries in %s (unparsable triple, or no lexicalisation marked good)",
                    total - len(groups), total, where)
    return groups


@register_task("webnlg")
class WebNLGTask(TableToTextTask):
    """WebNLG 2017: local XML files or the hub (hub_id "web_nlg:webnlg_challenge_2017": modified_triple_sets and lex
    columns of the HF web_nlg dataset; untested here, there is no network)."""

    splits = ("train", "validation", "test", "test_seen", "test_unseen")
    bleu_style = "webnlg"
    data_folder = "webnlg2017"

    def groups(self, split: str) -> list[Group]:
        if split in ("test_seen", "test_unseen"):
            return [g for g in super().groups("test") if g.meta["seen"] == (split == "test_seen")]
        return super().groups(split)

    def read_local(self, data_dir: Path, split: str) -> list[Group]:
        files = xml_files(data_dir, split)
        return cached_parse(self.name, split, files, lambda: parse_files(files, split))

    def read_hub(self, split: str) -> list[Group]:
        rows = hub_split(self.hub(), split, self.name, str(self.cfg.hub_id))
        groups = []
        for row in rows:
            sets = (row.get("modified_triple_sets") or {}).get("mtriple_set") or [[]]
            lex = row.get("lex") or {}
            comments = lex.get("comment") or ["good"] * len(lex.get("text") or [])
            category = row.get("category", "")
            meta = {"eid": row.get("eid", ""), "category": category, "size": int(row.get("size") or 0),
                    "seen": category not in UNSEEN_CATEGORIES}
            group = entry_group([split_mtriple(t) for t in sets[0]], list(zip(lex.get("text") or [], comments, strict=False)),
                                meta, good_only=split != "test")
            if group is not None:
                groups.append(group)
        return groups

    def score(self, predictions: list[str], examples: list[Example]) -> dict[str, float]:
        """task.metrics over all examples, plus bleu_seen and bleu_unseen when both kinds are present."""
        scores = super().score(predictions, examples)
        seen = [bool((e.meta or {}).get("seen", True)) for e in examples]
        if "bleu" in scores and any(seen) and not all(seen):
            for flag, name in ((True, "bleu_seen"), (False, "bleu_unseen")):
                idx = [i for i, s in enumerate(seen) if s == flag]
                part = self._scores([predictions[i] for i in idx], [examples[i].references for i in idx], ("bleu",))
                scores[name] = part["bleu"]
        return scores
