"""Spider database schemas from tables.json: what the SQL parser resolves names against, and the key map.

`DbSchema` holds one tables.json entry (original table / column names, primary and foreign keys). From it:
- `names()`: {table: [columns]} lowercased, the schema the official evaluation reads from each SQLite file
  (process_sql.get_schema); tables.json lists the same original names, and is available without the databases;
- `id_map()`: the official identifiers: "*" -> "__all__", "t.c" -> "__t.c__", "t" -> "__t__";
- `foreign_key_map()`: evaluation.build_foreign_key_map: each column in a foreign-key group maps to the group's
  lowest-index column, so `T2.stuid` and `T1.stuid` joined by a key count as the same column. Groups are formed as
  the official code forms them: a key pair joins the first group that already holds either column, else a new one
  (groups are not merged transitively).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class DbSchema:
    """One database of tables.json. columns: (table index or -1 for "*", original name), in tables.json order."""

    db_id: str
    tables: tuple[str, ...]
    columns: tuple[tuple[int, str], ...]
    primary_keys: tuple[int, ...] = ()
    foreign_keys: tuple[tuple[int, int], ...] = ()

    @classmethod
    def from_entry(cls, entry: dict[str, Any]) -> DbSchema:
        """A tables.json entry -> DbSchema; KeyError/TypeError/ValueError on a malformed entry."""
        primary = []
        for key in entry.get("primary_keys") or []:  # newer tables.json files list composite keys as lists
            primary.extend(key if isinstance(key, list) else [key])
        return cls(
            db_id=str(entry["db_id"]),
            tables=tuple(str(t) for t in entry["table_names_original"]),
            columns=tuple((int(t), str(c)) for t, c in entry["column_names_original"]),
            primary_keys=tuple(int(k) for k in primary),
            foreign_keys=tuple((int(a), int(b)) for a, b in entry.get("foreign_keys") or []),
        )

    def names(self) -> dict[str, list[str]]:
        """{table: [column, ...]}, lowercased, tables in tables.json order."""
        out: dict[str, list[str]] = {t.lower(): [] for t in self.tables}
        for table, column in self.columns:
            if table >= 0:
                out[self.tables[table].lower()].append(column.lower())
        return out

    def id_map(self) -> dict[str, str]:
        ids = {"*": "__all__"}
        names = self.names()
        for table, columns in names.items():
            for column in columns:
                ids[f"{table}.{column}"] = f"__{table}.{column}__"
        for table in names:
            ids[table] = f"__{table}__"
        return ids

    def column_id(self, index: int) -> str:
        """The official identifier of column `index` of tables.json ("__all__" for "*")."""
        table, column = self.columns[index]
        return "__all__" if table < 0 else f"__{self.tables[table].lower()}.{column.lower()}__"

    def foreign_key_map(self) -> dict[str, str]:
        groups: list[set[int]] = []
        for a, b in self.foreign_keys:
            group = next((g for g in groups if a in g or b in g), None)
            if group is None:
                group = set()
                groups.append(group)
            group.update((a, b))
        mapping: dict[str, str] = {}
        for group in groups:
            lowest = self.column_id(min(group))
            for index in group:
                mapping[self.column_id(index)] = lowest
        return mapping

    def serialize(self, with_keys: bool = False) -> str:
        """`t1 : c1 , c2 | t2 : c3` (original names), plus primary and foreign keys with `with_keys`."""
        parts = []
        for i, table in enumerate(self.tables):
            cols = [c for t, c in self.columns if t == i]
            parts.append(f"{table} : {' , '.join(cols)}")
        text = " | ".join(parts)
        if with_keys:
            qualified = [f"{self.tables[t]}.{c}" if t >= 0 else c for t, c in self.columns]
            primary = " , ".join(qualified[k] for k in self.primary_keys)
            foreign = " , ".join(f"{qualified[a]} = {qualified[b]}" for a, b in self.foreign_keys)
            text += f" | primary keys : {primary} | foreign keys : {foreign}"
        return text


def load_tables(path: str | Path) -> dict[str, DbSchema]:
    """{db_id: DbSchema} of a tables.json file. Raises ValueError naming the first malformed entry."""
    entries = json.loads(Path(path).read_text(encoding="utf-8"))
    try:
        return schemas_from_entries(entries)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from err


def schemas_from_entries(entries: Any) -> dict[str, DbSchema]:
    """{db_id: DbSchema} of tables.json's entries. Raises ValueError naming the first malformed entry."""
    if not isinstance(entries, list):
        raise ValueError(f"holds a JSON {type(entries).__name__}, expected a list of database schemas")
    schemas: dict[str, DbSchema] = {}
    for i, entry in enumerate(entries):
        try:
            schema = DbSchema.from_entry(entry)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as err:
            raise ValueError(f"entry {i} is not a tables.json schema ({type(err).__name__}: {err})") from err
        schemas[schema.db_id] = schema
    return schemas
