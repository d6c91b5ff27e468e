"""E2E NLG Challenge (Novikova et al. 2017): restaurant meaning representations -> descriptions.

Official files (task.data_dir): trainset.csv, devset.csv, testset_w_refs.csv with columns `mr,ref`, one row per
(MR, reference); splits train / validation / test. A grouped example is one distinct MR, in order of first
appearance, with all its references (dev: 547 MRs from 4,672 rows; test: 630 from 4,693).

Linearisation (the format of Li & Liang's prefix-tuning data, which LoRA's examples/NLG reuses):
`name[The Eagle], eatType[coffee shop], food[French]` -> `name : The Eagle | Type : coffee shop | food : French`,
attributes in the MR's order, with their names as in that data: eatType -> "Type", priceRange -> "price",
familyFriendly -> "family friendly", customer rating / area / food / near / name unchanged. Values are kept
verbatim (that data also space-tokenised values, e.g. "£ 30"; we do not, so the model sees the raw MR text).

Scoring: the E2E measure (tuetschek/e2e-metrics) is case-insensitive multi-reference BLEU with mteval-v13a
tokenisation: bleu_lowercase=true and the "13a" style (peftrun.metrics.generation).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from peftrun.tasks.base import register_task
from peftrun.tasks.loading import DataFileError, cached_parse, hub_split, read_csv_rows, require_file, warn_skipped
from peftrun.tasks.table_to_text import Group, TableToTextTask, group_pairs

FILES = {"train": "trainset.csv", "validation": "devset.csv", "test": "testset_w_refs.csv"}
ATTRIBUTE_NAMES = {"eatType": "Type", "priceRange": "price", "familyFriendly": "family friendly"}
_ATTRIBUTE = re.compile(r"\s*([^\[\],]+?)\s*\[([^\[\]]*)\]\s*(?:,|$)")  # key[value], values hold no brackets


def parse_mr(mr: str) -> list[tuple[str, str]] | None:
    """`name[X], eatType[pub]` -> [("name", "X"), ("eatType", "pub")]; None when not a well-formed MR."""
    text = mr.strip()
    pairs, pos = [], 0
    while pos < len(text):
        match = _ATTRIBUTE.match(text, pos)
        if not match or not match.group(2).strip():
            return None
        pairs.append((match.group(1), match.group(2).strip()))
        pos = match.end()
    return pairs or None


def linearise_mr(pairs: list[tuple[str, str]]) -> str:
    return " | ".join(f"{ATTRIBUTE_NAMES.get(k, k)} : {v}" for k, v in pairs)


def rows_to_groups(rows: list[tuple[str, str]], where: str) -> list[Group]:
    """(mr, ref) rows -> Groups per distinct MR; rows with an empty/unparsable MR or an empty ref are skipped."""
    kept: list[tuple[str, str, str, dict[str, Any]]] = []
    for mr, ref in rows:
        pairs = parse_mr(mr or "")
        if pairs is None or not (ref or "").strip():
            continue
        kept.append((mr.strip(), linearise_mr(pairs), ref.strip(), {"mr": mr.strip()}))
    warn_skipped(len(rows) - len(kept), len(rows), where, "empty or unparsable mr, or empty ref")
    return group_pairs(kept)


def read_csv(path: Path) -> list[Group]:
    table = read_csv_rows(path, "e2e")
    header = table[0] if table else []
    columns = [c.strip().lower() for c in header]
    if "mr" not in columns or "ref" not in columns:
        raise DataFileError("e2e", path, f"has columns {header[:5]}, expected mr,ref", 1,
                            "point task.data_dir at the official E2E csv files")
    i_mr, i_ref = columns.index("mr"), columns.index("ref")
    rows = [(row[i_mr] if len(row) > i_mr else "", row[i_ref] if len(row) > i_ref else "") for row in table[1:]]
    return rows_to_groups(rows, str(path))


@register_task("e2e")
class E2ETask(TableToTextTask):
    """E2E: local csv files or the hub dataset (hub_id, default tuetschek/e2e_nlg: meaning_representation,
    human_reference per row, the csv's columns; untested here, there is no network)."""

    bleu_style = "13a"
    data_folder = "e2e"

    def read_local(self, data_dir: Path, split: str) -> list[Group]:
        path = require_file(data_dir / FILES[split], "e2e", f"set task.data_dir to the folder holding {', '.join(FILES.values())}")
        return cached_parse(self.name, split, [path], lambda: read_csv(path))

    def read_hub(self, split: str) -> list[Group]:
        rows = hub_split(self.hub(), split, self.name, str(self.cfg.hub_id))
        pairs = [(r.get("meaning_representation", ""), r.get("human_reference") or r.get("target") or "") for r in rows]
        return rows_to_groups(pairs, f"hub {self.cfg.hub_id} {split}")
