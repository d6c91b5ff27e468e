"""Exact set match and hardness, as the official Spider evaluation (taoyds/spider evaluation.py) defines them.

Before matching, both parsed queries are normalised as the official `evaluate` does:
- values are dropped (DISABLE_VALUE): every condition value that is not a sub-query becomes None (literals and
  compared columns alike); sub-queries in conditions keep their structure, with their own values dropped;
- DISTINCT is dropped (DISABLE_DISTINCT) from the select clause and from every column unit of the query and of its
  INTERSECT / UNION / EXCEPT parts; a sub-query inside a condition keeps its DISTINCT and its column ids (the
  official code does not descend there);
- a column in a foreign-key group maps to the group's lowest-index column when its table is in the FROM clause.

A prediction then matches its gold when every component matches (`components`):
  select        the multiset of (aggregate, value unit) pairs
  where         the multiset of conditions (value-free) and the set of AND/OR connectives
  group         the multiset of GROUP BY column names (table ignored)
  having        GROUP BY columns in order and the HAVING conditions in order, when both have a GROUP BY
  order         ORDER BY direction and value units in order, and LIMIT present in both or neither
  iuen          INTERSECT / EXCEPT / UNION: the same ones present, each matching recursively
  keywords      the set of where / group / having / order / asc / desc / limit / except / union / intersect /
                or / not / in / like keywords
and finally the FROM clauses hold the same multiset of table units (join conditions are not compared, as in
evaluation.py on taoyds/spider's master; one older revision also compared the first join condition; LIMIT values
are not compared). Hardness (easy / medium / hard / extra) is computed on the gold's raw parse by the
official component counts, quirks included (`count_others` counts a WHERE condition with NOT, and HAVING's AND/OR
connectives, as aggregates, as the official `has_agg` does on those items).
"""

from __future__ import annotations

import copy
import json
from typing import Any

from peftrun.metrics.spider.parser import WHERE_OPS

HARDNESS_LEVELS = ("easy", "medium", "hard", "extra")
COMPONENTS = ("select", "where", "group", "having", "order", "and_or", "iuen", "keywords")

EMPTY_SQL: dict[str, Any] = {
    "select": (False, []), "from": {"table_units": [], "conds": []}, "where": [], "groupBy": [], "having": [],
    "orderBy": [], "limit": None, "intersect": None, "except": None, "union": None,
}  # fmt: skip  (the official evaluation's stand-in for a prediction that does not parse)


# -- normalisation (evaluation.rebuild_sql_val / rebuild_sql_col) ---------------------------------------------
def strip_values(sql: dict | None) -> dict | None:
    """Condition values to None except sub-queries (recursing into them and into IUE parts); in place."""
    if sql is None:
        return None
    for key in ("where", "having"):
        sql[key] = _strip_condition(sql[key])
    sql["from"]["conds"] = _strip_condition(sql["from"]["conds"])
    for op in ("intersect", "except", "union"):
        sql[op] = strip_values(sql[op])
    return sql


def _strip_condition(condition: list) -> list:
    out = []
    for i, item in enumerate(condition):
        if i % 2:
            out.append(item)
            continue
        not_op, op_id, val_unit, val1, val2 = item
        val1 = strip_values(val1) if isinstance(val1, dict) else None
        val2 = strip_values(val2) if isinstance(val2, dict) else None
        out.append((not_op, op_id, val_unit, val1, val2))
    return out


def valid_columns(table_units: list, id_map: dict[str, str]) -> set[str]:
    """Column ids of the tables named in FROM (evaluation.build_valid_col_units)."""
    prefixes = {unit[1][:-2] for unit in table_units if unit[0] == "table_unit"}
    return {v for v in id_map.values() if "." in v and v[: v.index(".")] in prefixes}


def _col(unit: tuple | None, valid: set[str], kmap: dict[str, str]) -> tuple | None:
    if unit is None:
        return None
    agg, col_id, _distinct = unit
    if col_id in kmap and col_id in valid:
        col_id = kmap[col_id]
    return agg, col_id, None


def _val(unit: tuple | None, valid: set[str], kmap: dict[str, str]) -> tuple | None:
    if unit is None:
        return None
    op, first, second = unit
    return op, _col(first, valid, kmap), _col(second, valid, kmap)


def _cond(condition: list, valid: set[str], kmap: dict[str, str]) -> list:
    return [
        item if i % 2 else (item[0], item[1], _val(item[2], valid, kmap), item[3], item[4])
        for i, item in enumerate(condition)
    ]


def map_columns(sql: dict | None, valid: set[str], kmap: dict[str, str]) -> dict | None:
    """Drop DISTINCT and map foreign-key columns, in the clauses the official code rebuilds; in place."""
    if sql is None:
        return None
    sql["select"] = (None, [(agg, _val(unit, valid, kmap)) for agg, unit in sql["select"][1]])
    sql["from"]["conds"] = _cond(sql["from"]["conds"], valid, kmap)
    sql["where"] = _cond(sql["where"], valid, kmap)
    sql["groupBy"] = [_col(unit, valid, kmap) for unit in sql["groupBy"]]
    if sql["orderBy"]:
        direction, units = sql["orderBy"]
        sql["orderBy"] = (direction, [_val(unit, valid, kmap) for unit in units])
    sql["having"] = _cond(sql["having"], valid, kmap)
    for op in ("intersect", "except", "union"):
        sql[op] = map_columns(sql[op], valid, kmap)
    return sql


def normalize(sql: dict, id_map: dict[str, str], kmap: dict[str, str]) -> dict:
    """A normalised deep copy of a parsed query, ready for `exact_match`."""
    out = copy.deepcopy(sql)
    valid = valid_columns(out["from"]["table_units"], id_map)
    return map_columns(strip_values(out), valid, kmap)  # type: ignore[return-value]


# -- components (evaluation.eval_sel ... eval_keywords) -------------------------------------------------------
def _multiset_equal(pred: list, gold: list) -> bool:
    """The official count-and-remove match: equal totals and every predicted item found once."""
    if len(pred) != len(gold):
        return False
    remaining = list(gold)
    for item in pred:
        if item not in remaining:
            return False
        remaining.remove(item)
    return True


def _group_names(sql: dict) -> list[str]:
    return [unit[1].split(".")[1] if "." in unit[1] else unit[1] for unit in sql["groupBy"]]


def keywords(sql: dict) -> set[str]:
    out = set()
    if sql["where"]:
        out.add("where")
    if sql["groupBy"]:
        out.add("group")
    if sql["having"]:
        out.add("having")
    if sql["orderBy"]:
        out.update((sql["orderBy"][0], "order"))
    if sql["limit"] is not None:
        out.add("limit")
    for op in ("except", "union", "intersect"):
        if sql[op] is not None:
            out.add(op)
    connectives = sql["from"]["conds"][1::2] + sql["where"][1::2] + sql["having"][1::2]
    if "or" in connectives:
        out.add("or")
    units = sql["from"]["conds"][::2] + sql["where"][::2] + sql["having"][::2]
    if any(unit[0] for unit in units):
        out.add("not")
    if any(unit[1] == WHERE_OPS.index("in") for unit in units):
        out.add("in")
    if any(unit[1] == WHERE_OPS.index("like") for unit in units):
        out.add("like")
    return out


def _iuen(pred: dict, gold: dict) -> bool:
    for op in ("intersect", "except", "union"):
        if (pred[op] is None) != (gold[op] is None):
            return False
        if pred[op] is not None and not exact_match(pred[op], gold[op]):
            return False
    return True


def components(pred: dict, gold: dict) -> dict[str, bool]:
    """Which components of two normalised queries match (see the module doc)."""
    pred_conds, gold_conds = pred["where"][::2], gold["where"][::2]
    both_grouped = bool(pred["groupBy"]) and bool(gold["groupBy"])
    return {
        "select": _multiset_equal(pred["select"][1], gold["select"][1]),
        "where": _multiset_equal(pred_conds, gold_conds),
        "group": _multiset_equal(_group_names(pred), _group_names(gold)),
        "having": (bool(pred["groupBy"]) == bool(gold["groupBy"]))
        and (not both_grouped or ([u[1] for u in pred["groupBy"]] == [u[1] for u in gold["groupBy"]]
                                  and pred["having"] == gold["having"])),
        "order": (bool(pred["orderBy"]) == bool(gold["orderBy"]))
        and (not gold["orderBy"] or (pred["orderBy"] == gold["orderBy"]
                                     and (pred["limit"] is None) == (gold["limit"] is None))),
        "and_or": set(pred["where"][1::2]) == set(gold["where"][1::2]),
        "iuen": _iuen(pred, gold),
        "keywords": keywords(pred) == keywords(gold),
    }


def _table_key(unit: tuple) -> tuple[str, str]:
    kind, body = unit
    return kind, body if isinstance(body, str) else json.dumps(body, sort_keys=True, default=str)


def exact_match(pred: dict, gold: dict) -> bool:
    """Official exact set match of two normalised queries: all components, then the FROM table units."""
    if not all(components(pred, gold).values()):
        return False
    if gold["from"]["table_units"]:
        return sorted(gold["from"]["table_units"], key=_table_key) == sorted(pred["from"]["table_units"], key=_table_key)
    return True


# -- hardness (evaluation.eval_hardness) ----------------------------------------------------------------------
def _has_agg(item: Any) -> bool:
    return item[0] != 0  # as the official has_agg: also true for a NOT condition and for "and"/"or" strings


def _count_agg(items: list) -> int:
    return sum(1 for item in items if _has_agg(item))


def nested_queries(sql: dict) -> list[dict]:
    """Sub-queries in conditions (FROM ON, WHERE, HAVING) and the IUE parts (evaluation.get_nestedSQL)."""
    nested = []
    for unit in sql["from"]["conds"][::2] + sql["where"][::2] + sql["having"][::2]:
        nested += [v for v in (unit[3], unit[4]) if isinstance(v, dict)]
    return nested + [sql[op] for op in ("intersect", "except", "union") if sql[op] is not None]


def _component1(sql: dict) -> int:
    count = sum(bool(sql[key]) for key in ("where", "groupBy", "orderBy")) + (sql["limit"] is not None)
    if sql["from"]["table_units"]:
        count += len(sql["from"]["table_units"]) - 1
    connectives = sql["from"]["conds"][1::2] + sql["where"][1::2] + sql["having"][1::2]
    count += connectives.count("or")
    units = sql["from"]["conds"][::2] + sql["where"][::2] + sql["having"][::2]
    return count + sum(1 for unit in units if unit[1] == WHERE_OPS.index("like"))


def _others(sql: dict) -> int:
    aggs = _count_agg(sql["select"][1]) + _count_agg(sql["where"][::2]) + _count_agg(sql["groupBy"])
    if sql["orderBy"]:
        units = sql["orderBy"][1]
        aggs += _count_agg([u[1] for u in units if u[1]] + [u[2] for u in units if u[2]])
    aggs += _count_agg(sql["having"])
    return (aggs > 1) + (len(sql["select"][1]) > 1) + (len(sql["where"]) > 1) + (len(sql["groupBy"]) > 1)


def hardness(sql: dict) -> str:
    """easy | medium | hard | extra for a raw (not normalised) parsed gold query."""
    c1, c2, others = _component1(sql), len(nested_queries(sql)), _others(sql)
    if c1 <= 1 and others == 0 and c2 == 0:
        return "easy"
    if (others <= 2 and c1 <= 1 and c2 == 0) or (c1 <= 2 and others < 2 and c2 == 0):
        return "medium"
    if (others > 2 and c1 <= 2 and c2 == 0) or (2 < c1 <= 3 and others <= 2 and c2 == 0) or \
            (c1 <= 1 and others == 0 and c2 <= 1):
        return "hard"
    return "extra"
