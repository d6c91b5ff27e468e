"""Execution accuracy with untrusted SQL: read-only, one SELECT, bounded in steps, time, rows and value size.

A predicted query comes from a model and may be anything (DROP, DELETE, UPDATE, ATTACH, VACUUM INTO, a
recursive CTE that never ends). `run_query` opens the database with SQLite's URI `mode=ro` (the file cannot be
written through this connection), sets `PRAGMA query_only`, allows no attached databases, and installs an
authorizer that permits only what a read query needs (SELECT, reading columns, calling functions, recursive CTEs)
and denies every other action: writes, schema changes, ATTACH / DETACH, PRAGMA, transactions, VACUUM. Before
that, a statement that does not start (after comments) with SELECT, WITH, VALUES or "(" is refused outright. The
sqlite3 module executes one statement per call, so `SELECT 1; DROP TABLE t` is refused whole. A progress handler
stops the query after `max_steps` virtual-machine instructions or `timeout_s` seconds of wall time, whichever
comes first; at most `max_rows` rows are fetched and no string or blob may exceed `max_value_bytes`.

Result comparison follows the test-suite execution evaluation that Spider's leaderboard uses (Zhong et al.
2020, `result_eq`): two results are equal when some permutation of the predicted columns makes the row multisets
equal (the row sequences, when the gold query has ORDER BY).
"""

from __future__ import annotations

import itertools
import re
import sqlite3
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_ALLOWED_ACTIONS = frozenset(
    (sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION, sqlite3.SQLITE_RECURSIVE)
)
_DENIED_FUNCTIONS = frozenset({"load_extension"})
_LEADING_COMMENTS = re.compile(r"\A(?:\s+|--[^\n]*(?:\n|\Z)|/\*.*?\*/)*", re.DOTALL)
_QUERY_START = re.compile(r"(?:select|with|values)\b|\(", re.IGNORECASE)
_CHECK_EVERY = 1000  # VM instructions between progress-handler calls
_MAX_PERMUTATIONS = 10_000  # column orders tried when comparing results


@dataclass(frozen=True)
class ExecLimits:
    """Bounds on one query. timeout_s: wall-clock seconds; max_steps: SQLite VM instructions."""

    timeout_s: float = 5.0
    max_steps: int = 50_000_000
    max_rows: int = 100_000
    max_value_bytes: int = 1_000_000


@dataclass(frozen=True)
class QueryResult:
    """rows when the query ran; otherwise error (refused, failed, interrupted by a limit, too many rows)."""

    rows: list[tuple[Any, ...]] | None
    error: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


def _authorize(action: int, arg1: str | None, arg2: str | None, db_name: str | None, trigger: str | None) -> int:
    if action not in _ALLOWED_ACTIONS:
        return sqlite3.SQLITE_DENY
    if action == sqlite3.SQLITE_FUNCTION and (arg2 or "").lower() in _DENIED_FUNCTIONS:
        return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK


def connect_readonly(db_path: str | Path) -> sqlite3.Connection:
    """A connection that cannot change `db_path` (see the module doc). FileNotFoundError when it is missing."""
    path = Path(db_path).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"no database file {path}")
    conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=1.0, isolation_level=None)
    conn.execute("PRAGMA query_only = ON")
    if hasattr(conn, "setlimit"):  # Python >= 3.11
        conn.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
    conn.set_authorizer(_authorize)
    return conn


def run_query(db_path: str | Path, sql: str, limits: ExecLimits = ExecLimits()) -> QueryResult:
    """Rows of one read-only query on `db_path`, or the reason it gave none; never raises for bad SQL."""
    started = time.monotonic()
    deadline = started + limits.timeout_s
    steps = 0

    def progress() -> int:
        nonlocal steps
        steps += _CHECK_EVERY
        return int(steps > limits.max_steps or time.monotonic() > deadline)

    if not _QUERY_START.match(sql, _LEADING_COMMENTS.match(sql).end()):
        return QueryResult(None, "refused: not a query (only SELECT / WITH / VALUES run)")
    try:
        conn = connect_readonly(db_path)
    except (OSError, sqlite3.Error) as err:
        return QueryResult(None, f"cannot open database: {err}")
    try:
        if hasattr(conn, "setlimit"):
            conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, limits.max_value_bytes)
        conn.set_progress_handler(progress, _CHECK_EVERY)
        cursor = conn.execute(sql)
        rows = cursor.fetchmany(limits.max_rows + 1)
        if len(rows) > limits.max_rows:
            return QueryResult(None, f"more than {limits.max_rows} rows", time.monotonic() - started)
        return QueryResult([tuple(r) for r in rows], None, time.monotonic() - started)
    except (sqlite3.Error, sqlite3.Warning, ValueError, OverflowError, MemoryError) as err:
        reason = str(err) or type(err).__name__
        if steps > limits.max_steps:
            reason = f"step limit ({limits.max_steps}) reached"
        elif time.monotonic() > deadline:
            reason = f"time limit ({limits.timeout_s}s) reached"
        return QueryResult(None, f"{type(err).__name__}: {reason}", time.monotonic() - started)
    finally:
        conn.close()


# -- result comparison (test-suite-sql-eval exec_eval.result_eq) ----------------------------------------------
def _column_permutations(gold: Sequence[tuple], pred: Sequence[tuple]) -> Iterator[tuple[int, ...]]:
    """Candidate orders of pred's columns (at most _MAX_PERMUTATIONS): pred column j may stand for gold column i
    only when their value multisets are equal."""
    width = len(gold[0])
    gold_cols = [Counter(row[i] for row in gold) for i in range(width)]
    pred_cols = [Counter(row[j] for row in pred) for j in range(width)]
    choices = [[j for j in range(width) if pred_cols[j] == gold_cols[i]] for i in range(width)]
    if any(not c for c in choices):
        return iter(())
    candidates = (p for p in itertools.product(*choices) if len(set(p)) == width)
    return itertools.islice(candidates, _MAX_PERMUTATIONS)


def results_equal(gold: Sequence[tuple], pred: Sequence[tuple], order_matters: bool) -> bool:
    """Same denotation up to a column permutation; rows compared as multisets unless `order_matters`."""
    if not gold and not pred:
        return True
    if len(gold) != len(pred) or len(gold[0]) != len(pred[0]):
        return False
    for perm in _column_permutations(gold, pred):
        permuted = [tuple(row[j] for j in perm) for row in pred]
        if (list(gold) == permuted) if order_matters else (Counter(gold) == Counter(permuted)):
            return True
    return False


def execution_match(db_path: str | Path, pred_sql: str, gold_sql: str,
                    limits: ExecLimits = ExecLimits()) -> tuple[bool | None, str | None]:
    """(match, reason). match is None when the gold query itself does not run (not scorable)."""
    gold = run_query(db_path, gold_sql, limits)
    if not gold.ok or gold.rows is None:
        return None, f"gold query failed: {gold.error}"
    pred = run_query(db_path, pred_sql, limits)
    if not pred.ok or pred.rows is None:
        return False, pred.error
    return results_equal(gold.rows, pred.rows, "order by" in gold_sql.lower()), None
