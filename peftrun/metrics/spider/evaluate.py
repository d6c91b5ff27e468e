"""Score (prediction, gold, db_id) triples as the official Spider evaluation: exact set match by hardness level and
execution accuracy where the database file is present.

Per example: the gold's hardness from its raw parse; the prediction's parse (a prediction that does not parse
becomes the official empty SQL and so matches nothing); exact set match of the normalised pair
(`match.exact_match`); and, when `<db_dir>/<db_id>/<db_id>.sqlite` exists, execution match (`execute`).
A db_id that is not a plain folder name (absolute, "..", a separator) never opens a file outside `db_dir`. A
database file that SQLite cannot read (corrupt, not a database) is warned about once, naming the file, and its
examples are counted in `exec_db_errors` instead of silently leaving exec_accuracy.

Schemas come from tables.json (the official script reads each SQLite file's tables and columns; tables.json
lists the same original names and needs no database). A gold query the parser rejects (the official script would stop) is counted in `gold_parse_errors`, scored as
not matching, and counted in the "all" level only.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peftrun.metrics.spider.execute import ExecLimits, connect_readonly, execution_match
from peftrun.metrics.spider.match import EMPTY_SQL, HARDNESS_LEVELS, exact_match, hardness, normalize
from peftrun.metrics.spider.parser import SpiderParseError, parse_sql
from peftrun.metrics.spider.schema import DbSchema

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Verdict:
    """One scored example. hardness is None when the gold did not parse; execution None when not run."""

    db_id: str
    hardness: str | None
    exact: bool
    execution: bool | None
    pred_parsed: bool
    note: str | None = None
    db_error: str | None = None  # the database exists but cannot be used (execution not scored)


@dataclass
class SpiderEvaluator:
    """Scores against `schemas` (tables.json); executes where `db_dir` holds the database files."""

    schemas: dict[str, DbSchema]
    db_dir: Path | None = None
    limits: ExecLimits = field(default_factory=ExecLimits)
    execute: bool = True

    def __post_init__(self) -> None:
        self._prepared: dict[str, tuple[dict[str, list[str]], dict[str, str], dict[str, str]]] = {}
        self._db_errors: dict[str, str | None] = {}

    def _schema(self, db_id: str) -> tuple[dict[str, list[str]], dict[str, str], dict[str, str]]:
        if db_id not in self._prepared:
            if db_id not in self.schemas:
                raise KeyError(f"database {db_id!r} is not in tables.json")
            schema = self.schemas[db_id]
            self._prepared[db_id] = (schema.names(), schema.id_map(), schema.foreign_key_map())
        return self._prepared[db_id]

    def database(self, db_id: str) -> Path | None:
        """`<db_dir>/<db_id>/<db_id>.sqlite` when it exists and `db_id` is a plain folder name, else None."""
        if self.db_dir is None or not is_plain_name(db_id):
            return None
        path = Path(self.db_dir) / db_id / f"{db_id}.sqlite"
        return path if path.is_file() else None

    def database_error(self, db_id: str, path: Path) -> str | None:
        """Why the database at `path` cannot be used (checked once per db_id, warned once), or None."""
        if db_id not in self._db_errors:
            try:
                conn = connect_readonly(path)
                try:
                    conn.execute("SELECT count(*) FROM sqlite_master").fetchall()
                finally:
                    conn.close()
                self._db_errors[db_id] = None
            except (OSError, sqlite3.Error) as err:
                self._db_errors[db_id] = f"{path}: {type(err).__name__}: {err}"
                log.warning("spider: database %s cannot be read (%s: %s); its examples are not executed "
                            "(counted in exec_db_errors)", path, type(err).__name__, err)
        return self._db_errors[db_id]

    def verdict(self, pred: str, gold: str, db_id: str) -> Verdict:
        names, ids, kmap = self._schema(db_id)
        db = self.database(db_id) if self.execute else None
        db_error = self.database_error(db_id, db) if db is not None else None
        if self.execute and self.db_dir is not None and not is_plain_name(db_id):
            db_error = f"db_id {db_id!r} is not a plain folder name under {self.db_dir}"
        if db_error is not None:
            db = None
        try:
            gold_sql = parse_sql(gold, names, ids)
        except SpiderParseError as err:
            run = execution_match(db, pred, gold, self.limits)[0] if db else None
            return Verdict(db_id, None, False, run, False, f"gold does not parse: {err}", db_error)
        try:
            pred_sql, parsed, note = parse_sql(pred, names, ids), True, None
        except SpiderParseError as err:
            pred_sql, parsed, note = EMPTY_SQL, False, f"prediction does not parse: {err}"
        exact = exact_match(normalize(pred_sql, ids, kmap), normalize(gold_sql, ids, kmap))
        run = None
        if db is not None:
            run, reason = execution_match(db, pred, gold, self.limits)
            note = note or reason
        return Verdict(db_id, hardness(gold_sql), exact, run, parsed, note, db_error)

    def evaluate(self, triples: Iterable[tuple[str, str, str]]) -> tuple[dict[str, float], list[Verdict]]:
        """(metrics, verdicts) for (prediction, gold, db_id) triples; see `summarize` for the metric names."""
        verdicts = [self.verdict(p, g, d) for p, g, d in triples]
        return summarize(verdicts), verdicts


def is_plain_name(db_id: str) -> bool:
    """A db_id that names one folder inside the database folder: no separators, not ".", "..", absolute or empty."""
    return bool(db_id) and db_id not in (".", "..") and not any(c in db_id for c in "/\\\x00") and ":" not in db_id


def summarize(verdicts: list[Verdict]) -> dict[str, Any]:
    """exact_match (0-100) overall and per hardness level (with count_<level>), exec_accuracy over the examples
    that were executed (with exec_examples), exec_db_errors (examples whose database exists but cannot be read;
    present when not 0), pred_parse_errors and gold_parse_errors."""
    if not verdicts:
        raise ValueError("no predictions to score")
    out: dict[str, Any] = {"exact_match": 100.0 * sum(v.exact for v in verdicts) / len(verdicts)}
    for level in HARDNESS_LEVELS:
        chosen = [v for v in verdicts if v.hardness == level]
        out[f"exact_match_{level}"] = 100.0 * sum(v.exact for v in chosen) / len(chosen) if chosen else 0.0
        out[f"count_{level}"] = float(len(chosen))
    executed = [v for v in verdicts if v.execution is not None]
    if executed:
        out["exec_accuracy"] = 100.0 * sum(bool(v.execution) for v in executed) / len(executed)
        out["exec_examples"] = float(len(executed))
    db_errors = sum(v.db_error is not None for v in verdicts)
    if db_errors:
        out["exec_db_errors"] = float(db_errors)
    out["pred_parse_errors"] = float(sum(not v.pred_parsed and v.hardness is not None for v in verdicts))
    out["gold_parse_errors"] = float(sum(v.hardness is None for v in verdicts))
    return out
