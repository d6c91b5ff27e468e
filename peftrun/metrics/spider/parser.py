"""SQL -> the official Spider SQL structure (taoyds/spider process_sql.py), reimplemented with the same semantics.

The structure (tuples and lists exactly as the official code builds them, since the evaluation compares them
with ==):

    col_unit   (agg_id, col_id, is_distinct)            col_id: "__table.column__" | "__all__"
    val_unit   (unit_op, col_unit1, col_unit2 | None)
    table_unit ("table_unit", "__table__") | ("sql", sql)
    cond_unit  (not_op, op_id, val_unit, val1, val2)    values: float | quoted string | col_unit | sql
    condition  [cond_unit, "and" | "or", cond_unit, ...]
    sql        {"select": (is_distinct, [(agg_id, val_unit), ...]), "from": {"table_units": [...], "conds": condition},
                "where": condition, "groupBy": [col_unit, ...], "orderBy": [] | ("asc" | "desc", [val_unit, ...]),
                "having": condition, "limit": int | None, "intersect" / "except" / "union": sql | None}

The official parser makes the same assumptions and so accepts the same subset of SQL: only tables have aliases
(`AS`), tables are joined with JOIN (a comma-separated FROM is a parse error), one IUE operation per level, and the
last ASC/DESC of an ORDER BY is its direction. A query outside the subset raises `SpiderParseError`; the evaluation
then scores the prediction as the official one does (an empty SQL that matches nothing).

Tokenisation. Single quotes become double quotes, each quoted value becomes one token (original case), everything
else is lowercased. The official code then calls nltk's word_tokenize; here a regular expression does the same job
without nltk's punkt model. The two agree token for token on the official files (all 9,693 gold queries of
dev_gold.sql and train_gold.sql, and the example predictions; tests/test_spider.py checks dev and the predictions
against nltk when it is installed). They differ on unspaced operators, where nltk
keeps `t1.id=t2.id`, `a+b` or `x-y` as one token or splits `>=1` into `>`, `=1` and the official parser fails; here
these tokenize as SQL, so such predictions are parsed.
"""

from __future__ import annotations

import re
from typing import Any

CLAUSE_KEYWORDS = ("select", "from", "where", "group", "order", "limit", "intersect", "union", "except")
JOIN_KEYWORDS = ("join", "on", "as")
WHERE_OPS = ("not", "between", "=", ">", "<", ">=", "<=", "!=", "in", "like", "is", "exists")
UNIT_OPS = ("none", "-", "+", "*", "/")
AGG_OPS = ("none", "max", "min", "count", "sum", "avg")
COND_OPS = ("and", "or")
SQL_OPS = ("intersect", "union", "except")
ORDER_OPS = ("desc", "asc")
# Queries nested deeper (subqueries plus chained UNION / INTERSECT / EXCEPT) do not parse: every later step
# (normalisation, matching, hardness) recurses over the same structure, and Spider's deepest gold query has 4.
MAX_NESTING = 64

_TOKEN = re.compile(
    r"(?<![\w)])-(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"  # a signed number: "-" glued to digits, no operand before
    r"|\d+(?:\.\d*)?[eE][-+]?\d+"  # a number with an exponent
    r"|\w+(?:\.(?:\w+|\*))*"  # keyword, identifier, alias.column, masked value, number
    r"|\.\d+|>=|<=|!=|<>|\S"
)


class SpiderParseError(ValueError):
    """The query is outside the SQL subset the official Spider parser accepts."""


def tokenize(query: str) -> list[str]:
    """Tokens of `query` as the official `process_sql.tokenize` produces them (see the module doc)."""
    text = str(query).replace("'", '"')
    quotes = [i for i, ch in enumerate(text) if ch == '"']
    if len(quotes) % 2:
        raise SpiderParseError("unexpected quote: an odd number of quote characters")
    values: dict[str, str] = {}
    for i in range(len(quotes) - 1, 0, -2):  # right to left, so earlier positions stay valid
        start, end = quotes[i - 1], quotes[i]
        key = f"__val_{start}_{end}__"
        values[key] = text[start : end + 1]
        text = text[:start] + key + text[end + 1 :]
    tokens = [t.lower() for t in _TOKEN.findall(text)]
    tokens = [values.get(t, t) for t in tokens]
    out: list[str] = []
    for tok in tokens:  # the official merge of "!", ">", "<" with a following "="
        if tok == "=" and out and out[-1] in ("!", ">", "<"):
            out[-1] += "="
        else:
            out.append(tok)
    return out


def table_aliases(names: dict[str, list[str]], tokens: list[str]) -> dict[str, str]:
    """{alias or table: token before AS / the table}, as process_sql.get_tables_with_alias (a table name used as an
    alias is an error there too)."""
    aliases: dict[str, str] = {}
    for i, tok in enumerate(tokens):
        if tok == "as":
            if i + 1 >= len(tokens):
                raise SpiderParseError("AS at the end of the query")
            aliases[tokens[i + 1]] = tokens[i - 1]
    for table in names:
        if table in aliases:
            raise SpiderParseError(f"alias {table!r} has the name of a table")
        aliases[table] = table
    return aliases


class _Parser:
    """Recursive descent over a token list; every method takes a start index and returns (next index, node)."""

    def __init__(self, names: dict[str, list[str]], id_map: dict[str, str], aliases: dict[str, str]) -> None:
        self.names, self.ids, self.aliases = names, id_map, aliases
        self.depth = 0

    # -- names ---------------------------------------------------------------------------------------------
    def _id(self, key: str) -> str:
        if key not in self.ids:
            raise SpiderParseError(f"unknown table or column {key!r}")
        return self.ids[key]

    def _alias(self, name: str) -> str:
        if name not in self.aliases:
            raise SpiderParseError(f"unknown table or alias {name!r}")
        return self.aliases[name]

    def col(self, toks: list[str], idx: int, default_tables: list[str] | None) -> tuple[int, str]:
        tok = toks[idx]
        if tok == "*":
            return idx + 1, self.ids["*"]
        if "." in tok:
            parts = tok.split(".")
            if len(parts) != 2:
                raise SpiderParseError(f"bad column reference {tok!r}")
            return idx + 1, self._id(f"{self._alias(parts[0])}.{parts[1]}")
        if not default_tables:
            raise SpiderParseError(f"column {tok!r} outside any FROM")
        for alias in default_tables:
            table = self._alias(alias)
            if tok in self.names.get(table, ()):
                return idx + 1, self._id(f"{table}.{tok}")
        raise SpiderParseError(f"unknown column {tok!r}")

    def col_unit(self, toks: list[str], idx: int, default_tables: list[str] | None) -> tuple[int, tuple]:
        block = distinct = False
        if toks[idx] == "(":
            block, idx = True, idx + 1
        if toks[idx] in AGG_OPS:
            agg = AGG_OPS.index(toks[idx])
            idx += 1
            self._expect(toks, idx, "(")
            idx += 1
            if toks[idx] == "distinct":
                distinct, idx = True, idx + 1
            idx, col_id = self.col(toks, idx, default_tables)
            self._expect(toks, idx, ")")
            return idx + 1, (agg, col_id, distinct)
        if toks[idx] == "distinct":
            distinct, idx = True, idx + 1
        idx, col_id = self.col(toks, idx, default_tables)
        if block:
            self._expect(toks, idx, ")")
            idx += 1
        return idx, (AGG_OPS.index("none"), col_id, distinct)

    def val_unit(self, toks: list[str], idx: int, default_tables: list[str] | None) -> tuple[int, tuple]:
        block = False
        if toks[idx] == "(":
            block, idx = True, idx + 1
        unit_op, second = UNIT_OPS.index("none"), None
        idx, first = self.col_unit(toks, idx, default_tables)
        if idx < len(toks) and toks[idx] in UNIT_OPS:
            unit_op = UNIT_OPS.index(toks[idx])
            idx, second = self.col_unit(toks, idx + 1, default_tables)
        if block:
            self._expect(toks, idx, ")")
            idx += 1
        return idx, (unit_op, first, second)

    def table_unit(self, toks: list[str], idx: int) -> tuple[int, str, str]:
        table = self._alias(toks[idx])
        idx += 3 if idx + 1 < len(toks) and toks[idx + 1] == "as" else 1
        return idx, self._id(table), table

    # -- values and conditions -----------------------------------------------------------------------------
    def value(self, toks: list[str], idx: int, default_tables: list[str] | None) -> tuple[int, Any]:
        start, block = idx, False
        if toks[idx] == "(":
            block, idx = True, idx + 1
        if toks[idx] == "select":
            idx, val = self.sql(toks, idx)
        elif '"' in toks[idx]:
            val, idx = toks[idx], idx + 1
        else:
            try:
                val, idx = float(toks[idx]), idx + 1
            except ValueError:
                end = idx
                while end < len(toks) and toks[end] not in (",", ")", "and") and toks[end] not in CLAUSE_KEYWORDS \
                        and toks[end] not in JOIN_KEYWORDS:
                    end += 1
                _, val = self.col_unit(toks[start:end], 0, default_tables)
                idx = end
        if block:
            self._expect(toks, idx, ")")
            idx += 1
        return idx, val

    def condition(self, toks: list[str], idx: int, default_tables: list[str] | None) -> tuple[int, list]:
        conds: list = []
        while idx < len(toks):
            idx, val_unit = self.val_unit(toks, idx, default_tables)
            not_op = False
            if toks[idx] == "not":
                not_op, idx = True, idx + 1
            if idx >= len(toks) or toks[idx] not in WHERE_OPS:
                raise SpiderParseError(f"expected a comparison at {' '.join(toks[idx:idx + 3])!r}")
            op_id = WHERE_OPS.index(toks[idx])
            idx += 1
            val2 = None
            if op_id == WHERE_OPS.index("between"):
                idx, val1 = self.value(toks, idx, default_tables)
                self._expect(toks, idx, "and")
                idx, val2 = self.value(toks, idx + 1, default_tables)
            else:
                idx, val1 = self.value(toks, idx, default_tables)
            conds.append((not_op, op_id, val_unit, val1, val2))
            if idx < len(toks) and (toks[idx] in CLAUSE_KEYWORDS or toks[idx] in (")", ";") or toks[idx] in JOIN_KEYWORDS):
                break
            if idx < len(toks) and toks[idx] in COND_OPS:
                conds.append(toks[idx])
                idx += 1
        return idx, conds

    # -- clauses -------------------------------------------------------------------------------------------
    def select(self, toks: list[str], idx: int, default_tables: list[str]) -> tuple[int, tuple]:
        self._expect(toks, idx, "select")
        idx += 1
        distinct = False
        if idx < len(toks) and toks[idx] == "distinct":
            distinct, idx = True, idx + 1
        units = []
        while idx < len(toks) and toks[idx] not in CLAUSE_KEYWORDS:
            agg = AGG_OPS.index("none")
            if toks[idx] in AGG_OPS:
                agg, idx = AGG_OPS.index(toks[idx]), idx + 1
            idx, val_unit = self.val_unit(toks, idx, default_tables)
            units.append((agg, val_unit))
            if idx < len(toks) and toks[idx] == ",":
                idx += 1
        return idx, (distinct, units)

    def from_(self, toks: list[str], start: int) -> tuple[int, list, list, list[str]]:
        """FROM after `start`: (index after it, table units, join conditions, table names in FROM)."""
        if "from" not in toks[start:]:
            raise SpiderParseError("no FROM clause")
        idx = toks.index("from", start) + 1
        default_tables: list[str] = []
        table_units: list = []
        conds: list = []
        while idx < len(toks):
            block = False
            if toks[idx] == "(":
                block, idx = True, idx + 1
            if toks[idx] == "select":
                idx, sub = self.sql(toks, idx)
                table_units.append(("sql", sub))
            else:
                if toks[idx] == "join":
                    idx += 1
                idx, table_id, table = self.table_unit(toks, idx)
                table_units.append(("table_unit", table_id))
                default_tables.append(table)
            if idx < len(toks) and toks[idx] == "on":
                idx, these = self.condition(toks, idx + 1, default_tables)
                if conds:
                    conds.append("and")
                conds.extend(these)
            if block:
                self._expect(toks, idx, ")")
                idx += 1
            if idx < len(toks) and (toks[idx] in CLAUSE_KEYWORDS or toks[idx] in (")", ";")):
                break
        return idx, table_units, conds, default_tables

    def _keyword_condition(self, toks: list[str], idx: int, word: str, default_tables: list[str]) -> tuple[int, list]:
        if idx >= len(toks) or toks[idx] != word:
            return idx, []
        return self.condition(toks, idx + 1, default_tables)

    def group_by(self, toks: list[str], idx: int, default_tables: list[str]) -> tuple[int, list]:
        units: list = []
        if idx >= len(toks) or toks[idx] != "group":
            return idx, units
        self._expect(toks, idx + 1, "by")
        idx += 2
        while idx < len(toks) and not (toks[idx] in CLAUSE_KEYWORDS or toks[idx] in (")", ";")):
            idx, unit = self.col_unit(toks, idx, default_tables)
            units.append(unit)
            if idx < len(toks) and toks[idx] == ",":
                idx += 1
            else:
                break
        return idx, units

    def order_by(self, toks: list[str], idx: int, default_tables: list[str]) -> tuple[int, Any]:
        units: list = []
        direction = "asc"
        if idx >= len(toks) or toks[idx] != "order":
            return idx, units
        self._expect(toks, idx + 1, "by")
        idx += 2
        while idx < len(toks) and not (toks[idx] in CLAUSE_KEYWORDS or toks[idx] in (")", ";")):
            idx, unit = self.val_unit(toks, idx, default_tables)
            units.append(unit)
            if idx < len(toks) and toks[idx] in ORDER_OPS:
                direction, idx = toks[idx], idx + 1
            if idx < len(toks) and toks[idx] == ",":
                idx += 1
            else:
                break
        return idx, (direction, units)

    @staticmethod
    def limit(toks: list[str], idx: int) -> tuple[int, int | None]:
        if idx < len(toks) and toks[idx] == "limit":
            try:
                return idx + 2, int(toks[idx + 1])
            except (ValueError, IndexError) as err:
                raise SpiderParseError("LIMIT needs an integer") from err
        return idx, None

    def sql(self, toks: list[str], start: int) -> tuple[int, dict]:
        self.depth += 1
        try:
            if self.depth > MAX_NESTING:
                raise SpiderParseError(f"the query nests more than {MAX_NESTING} (sub)queries")
            return self._sql(toks, start)
        finally:
            self.depth -= 1

    def _sql(self, toks: list[str], start: int) -> tuple[int, dict]:
        idx, block = start, False
        if toks[idx] == "(":
            block, idx = True, idx + 1
        from_end, table_units, conds, default_tables = self.from_(toks, start)
        out: dict[str, Any] = {"from": {"table_units": table_units, "conds": conds}}
        _, out["select"] = self.select(toks, idx, default_tables)
        idx = from_end
        idx, out["where"] = self._keyword_condition(toks, idx, "where", default_tables)
        idx, out["groupBy"] = self.group_by(toks, idx, default_tables)
        idx, out["having"] = self._keyword_condition(toks, idx, "having", default_tables)
        idx, out["orderBy"] = self.order_by(toks, idx, default_tables)
        idx, out["limit"] = self.limit(toks, idx)
        idx = _skip_semicolons(toks, idx)
        if block:
            self._expect(toks, idx, ")")
            idx += 1
        idx = _skip_semicolons(toks, idx)
        for op in SQL_OPS:
            out[op] = None
        if idx < len(toks) and toks[idx] in SQL_OPS:
            op = toks[idx]
            idx, out[op] = self.sql(toks, idx + 1)
        return idx, out

    @staticmethod
    def _expect(toks: list[str], idx: int, word: str) -> None:
        if idx >= len(toks) or toks[idx] != word:
            found = toks[idx] if idx < len(toks) else "the end"
            raise SpiderParseError(f"expected {word!r}, found {found!r}")


def _skip_semicolons(toks: list[str], idx: int) -> int:
    while idx < len(toks) and toks[idx] == ";":
        idx += 1
    return idx


def parse_sql(query: str, names: dict[str, list[str]], id_map: dict[str, str]) -> dict[str, Any]:
    """The official SQL structure of `query` over a schema ({table: [columns]} lowercased and its id map).

    Raises SpiderParseError when the official parser would fail. Trailing tokens after a complete query are
    ignored, as there.
    """
    toks = tokenize(query)
    if not toks:
        raise SpiderParseError("empty query")
    parser = _Parser(names, id_map, table_aliases(names, toks))
    try:
        return parser.sql(toks, 0)[1]
    except IndexError as err:  # ran off the end of the tokens
        raise SpiderParseError("the query ends early") from err
    except RecursionError as err:
        raise SpiderParseError("the query nests too deeply") from err
