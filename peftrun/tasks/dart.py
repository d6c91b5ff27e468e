"""DART (Nan et al. 2021, v1.1.1): open-domain RDF triple sets -> text.

Official files (task.data_dir), per split the first that exists:
train: dart-v1.1.1-full-train.json | .xml; validation: dart-v1.1.1-full-dev.json | .xml;
test: dart-v1.1.1-full-test.json | .xml. JSON entries are {"tripleset": [[s, r, o], ...], "annotations":
[{"source", "text"}, ...]}; XML entries are <entry><modifiedtripleset><mtriple>s | r | o</mtriple>...<lex>text</lex>.

A grouped example is one entry (the unit of DART's official evaluation, whose reference files have one line per
entry), with its non-empty annotations as references. Identical triple sets in different entries stay separate
examples, as in the official scoring (the test set has 5,097 entries over 4,159 distinct triple sets).

Linearisation as Li & Liang (PrefixTuning data/dart) and LoRA's format_converting_dart.py: triples joined by
" | ", each "subject : relation : object" with the relation lowercased.

Scoring: the "webnlg" BLEU style (lowercased, \\W-split, first three references, multi-bleu.perl semantics), which
is how DART's run_eval_on_dart.sh scores against its lowercased three-reference files.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from peftrun.errors import PeftrunError
from peftrun.tasks.base import register_task
from peftrun.tasks.loading import DataFileError, cached_parse, hub_split, read_json, read_xml
from peftrun.tasks.table_to_text import Group, TableToTextTask

log = logging.getLogger(__name__)
STEMS = {"train": "dart-v1.1.1-full-train", "validation": "dart-v1.1.1-full-dev", "test": "dart-v1.1.1-full-test"}


def linearise_triples(triples: list[tuple[str, str, str]], lower_relation: bool = True) -> str:
    return " | ".join(f"{s} : {r.lower() if lower_relation else r} : {o}" for s, r, o in triples)


def split_mtriple(text: str | None) -> tuple[str, str, str] | None:
    """"s | r | o" -> (s, r, o); None when it does not have exactly three non-empty-relation parts."""
    parts = [p.strip() for p in (text or "").split(" | ")]
    if len(parts) != 3 or not parts[1]:
        return None
    return parts[0], parts[1], parts[2]


def make_group(triples: list[Any], refs: list[str], meta: dict[str, Any]) -> Group | None:
    """A Group, or None when a triple is malformed or no reference is left (counted as skipped)."""
    clean = []
    for triple in triples:
        if not isinstance(triple, (list, tuple)) or len(triple) != 3 or not str(triple[1]).strip():
            return None
        clean.append(tuple(str(x).strip() for x in triple))
    texts = [r.strip() for r in refs if r and r.strip()]
    if not clean or not texts:
        return None
    key = "\n".join(" | ".join(t) for t in clean)
    return Group(key, linearise_triples(clean), tuple(texts), {"triples": [list(t) for t in clean], **meta})


def json_entries(path: Path) -> list[tuple[list[Any], list[str], dict[str, Any]]]:
    """(triples, reference texts, meta) per entry of a DART json file."""
    entries = read_json(path, "dart", list, "a JSON list of entries")
    return [_json_entry(entry, i) for i, entry in enumerate(entries)]


def _json_entry(entry: Any, index: int) -> tuple[list[Any], list[str], dict[str, Any]]:
    """One JSON entry; a wrongly shaped one gives a malformed triple (so it is skipped and counted)."""
    meta = {"eid": str(index)}
    if not isinstance(entry, dict) or not isinstance(entry.get("tripleset") or [], list):
        return [None], [], meta
    annotations = entry.get("annotations") or []
    texts = [a.get("text") for a in annotations if isinstance(a, dict)] if isinstance(annotations, list) else []
    return entry.get("tripleset") or [], [t if isinstance(t, str) else "" for t in texts], meta


def xml_entries(path: Path) -> list[tuple[list[Any], list[str], dict[str, Any]]]:
    """(triples, reference texts, meta) per <entry> of a DART xml file; a malformed <mtriple> gives None."""
    return [
        (
            [split_mtriple(t.text) for t in entry.findall("modifiedtripleset/mtriple")],
            [lex.text or "" for lex in entry.findall("lex")],
            {"eid": entry.get("eid", ""), "category": entry.get("category", "")},
        )
        for entry in read_xml(path, "dart").iter("entry")
    ]


def entries_to_groups(entries: list[tuple[list[Any], list[str], dict[str, Any]]], where: str) -> list[Group]:
    """Groups of well-formed entries; one warning counts the skipped entries and the dropped empty references."""
    groups = [make_group(triples, texts, meta) for triples, texts, meta in entries]
    kept = [g for g in groups if g is not None]
    empty = sum(1 for _, texts, _ in entries for t in texts if not t.strip())
    if empty or len(kept) < len(groups):
        log.warning(
            "skipped %d of %d entries (unparsable triple or no reference) and %d empty references in %s",
            len(groups) - len(kept), len(groups), empty, where,
        )
    return kept


def parse_file(path: Path) -> list[Group]:
    entries = (xml_entries if path.suffix == ".xml" else json_entries)(path)
    if not entries:
        raise DataFileError("dart", path, "has no entries", fix="point task.data_dir at the official DART files")
    return entries_to_groups(entries, str(path))


@register_task("dart")
class DartTask(TableToTextTask):
    """DART: local json/xml files or the hub (hub_id, default GEM/dart: rows with tripleset and target /
    references, grouped per tripleset; untested here, there is no network)."""

    bleu_style = "webnlg"
    data_folder = "dart"

    def read_local(self, data_dir: Path, split: str) -> list[Group]:
        stem = STEMS[split]
        candidates = [data_dir / f"{stem}.json", data_dir / f"{stem}.xml"]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            raise PeftrunError(
                f"dart: missing file {candidates[0]} (or {candidates[1].name}) for split {split!r}; add the official "
                f"DART v1.1.1 file there, or use another split (task.train_split / task.eval_splits)"
            )
        return cached_parse(self.name, split, [path], lambda: parse_file(path))

    def read_hub(self, split: str) -> list[Group]:
        rows = hub_split(self.hub(), split, self.name, str(self.cfg.hub_id))
        merged: dict[str, tuple[list[Any], list[str]]] = {}  # insertion order = first appearance
        for row in rows:
            annotations = row.get("annotations") or {}
            texts = list(annotations.get("text") or []) or list(row.get("references") or []) or [row.get("target") or ""]
            triples, refs = merged.setdefault(json.dumps(row.get("tripleset") or []), (row.get("tripleset") or [], []))
            refs.extend(t for t in texts if t not in refs)
        entries = [(triples, refs, {"eid": str(i)}) for i, (triples, refs) in enumerate(merged.values())]
        return entries_to_groups(entries, f"hub {self.cfg.hub_id} {split}")
