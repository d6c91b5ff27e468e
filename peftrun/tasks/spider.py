"""Spider (Yu et al. 2018): text-to-SQL over 200 databases, scored by the official exact set match and execution.

Data:
- task.data_dir=DIR, the official release layout: train_spider.json (+ train_others.json when present) -> train,
  dev.json -> validation, test.json -> test (with test_tables.json and test_database/ when released); schemas
  from tables.json; databases DIR/database/<db_id>/<db_id>.sqlite, used for execution accuracy where present.
  The papers report dev (validation): the test set is hidden behind the leaderboard;
- task.data_dir=builtin: two tiny schemas and a few questions, the same for every split (tests, smoke runs);
- the hub copies carry no schemas or databases, so a null data_dir is an error naming the fix.
Rows without a question, a query or a db_id known to tables.json are skipped and counted in one warning.

Format (the serialisation of Shaw et al. 2021 / PICARD, the same for every backbone family):
    source = "<question> | <db_id> | <table> : <col> , <col> | <table> : ..."  (original table and column names)
with task.with_keys also " | primary keys : t.c , ... | foreign keys : t.c = t.c , ...", and target = the gold
SQL with whitespace collapsed. The schema follows the question, so truncation cuts the schema's tail.

Metrics (peftrun.metrics.spider): exact_match overall and exact_match_<easy|medium|hard|extra> with
count_<level>; exec_accuracy and exec_examples over the examples whose database is present (predicted SQL runs
read-only with step and time limits); pred_parse_errors, gold_parse_errors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from peftrun.errors import PeftrunError
from peftrun.metrics.spider.schema import DbSchema, schemas_from_entries
from peftrun.tasks.base import BUILTIN, Example, Task, register_task
from peftrun.tasks.loading import DataFileError, cached_parse, read_json, require_dir, require_file, warn_skipped

FILES = {"train": ("train_spider.json", "train_others.json"), "validation": ("dev.json",), "test": ("test.json",)}
TABLES = {"train": "tables.json", "validation": "tables.json", "test": "test_tables.json"}
DATABASES = {"train": "database", "validation": "database", "test": "test_database"}

BUILTIN_TABLES = (
    {"db_id": "concert_singer", "table_names_original": ["stadium", "singer", "concert", "singer_in_concert"],
     "column_names_original": [[-1, "*"], [0, "Stadium_ID"], [0, "Name"], [0, "Capacity"], [1, "Singer_ID"],
                               [1, "Name"], [1, "Country"], [1, "Age"], [2, "concert_ID"], [2, "concert_Name"],
                               [2, "Stadium_ID"], [2, "Year"], [3, "concert_ID"], [3, "Singer_ID"]],
     "primary_keys": [1, 4, 8, 12], "foreign_keys": [[10, 1], [13, 4], [12, 8]]},
    {"db_id": "pets_1", "table_names_original": ["Student", "Has_Pet", "Pets"],
     "column_names_original": [[-1, "*"], [0, "StuID"], [0, "LName"], [0, "Fname"], [0, "Age"], [1, "StuID"],
                               [1, "PetID"], [2, "PetID"], [2, "PetType"], [2, "pet_age"]],
     "primary_keys": [1, 7], "foreign_keys": [[5, 1], [6, 7]]},
)  # fmt: skip
BUILTIN_ROWS = (
    {"db_id": "concert_singer", "question": "How many singers do we have?", "query": "SELECT count(*) FROM singer"},
    {"db_id": "concert_singer", "question": "Show the name and country of singers older than 30.",
     "query": "SELECT name ,  country FROM singer WHERE age  >  30"},
    {"db_id": "concert_singer", "question": "What is the name of the stadium with the largest capacity?",
     "query": "SELECT name FROM stadium ORDER BY capacity DESC LIMIT 1"},
    {"db_id": "pets_1", "question": "How many pets does each student have?",
     "query": "SELECT count(*) ,  T1.stuid FROM student AS T1 JOIN has_pet AS T2 ON T1.stuid  =  T2.stuid "
              "GROUP BY T1.stuid"},
    {"db_id": "pets_1", "question": "Find the first names of students who have no pet.",
     "query": "SELECT fname FROM student WHERE stuid NOT IN (SELECT stuid FROM has_pet)"},
)  # fmt: skip


def read_rows(paths: list[Path]) -> list[Any]:
    rows: list[Any] = []
    for path in paths:
        rows += read_json(path, "spider", list, "a JSON list of examples")
    return rows


@register_task("spider")
class SpiderTask(Task):
    splits: ClassVar[tuple[str, ...]] = ("train", "validation", "test")
    options: ClassVar[tuple[str, ...]] = ("with_keys",)

    def __init__(self, cfg: Any, data_dir: str | None = None) -> None:
        super().__init__(cfg, data_dir)
        self._schemas: dict[str, dict[str, DbSchema]] = {}

    def schemas(self, split: str) -> dict[str, DbSchema]:
        """{db_id: schema} for `split` (tables.json, or test_tables.json for test)."""
        if split not in self._schemas:
            if self.cfg.data_dir == BUILTIN:
                self._schemas[split] = {e["db_id"]: DbSchema.from_entry(e) for e in BUILTIN_TABLES}
            else:
                path = require_file(self._folder() / TABLES[split], "spider")
                entries = read_json(path, "spider", list, "a JSON list of database schemas")
                try:
                    self._schemas[split] = schemas_from_entries(entries)
                except ValueError as err:
                    raise DataFileError("spider", path, str(err)) from err
        return self._schemas[split]

    def database_dir(self, split: str) -> Path | None:
        if self.cfg.data_dir == BUILTIN:
            return None
        path = self._folder() / DATABASES[split]
        return path if path.is_dir() else None

    def _folder(self) -> Path:
        if not self.cfg.data_dir:
            hint = ""
            if self.data_dir and (Path(self.data_dir) / "spider" / "tables.json").is_file():
                hint = f", e.g. task.data_dir={Path(self.data_dir) / 'spider'}"
            raise PeftrunError("spider: the hub copies have no schemas or databases; set task.data_dir=DIR (the "
                               f"official Spider files: tables.json, dev.json, database/{hint})")
        return require_dir(self.cfg.data_dir, "spider")

    def _rows(self, split: str) -> tuple[list[Any], str]:
        if self.cfg.data_dir == BUILTIN:
            return [dict(r) for r in BUILTIN_ROWS], "built-in spider sample"
        folder = self._folder()
        first, *rest = FILES[split]
        paths = [require_file(folder / first, "spider", f"set task.data_dir to the folder holding {first}")]
        paths += [folder / name for name in rest if (folder / name).is_file()]
        return cached_parse(self.name, split, paths, lambda: read_rows(paths)), str(paths[0])  # type: ignore[arg-type]

    def load(self, split: str, grouped: bool) -> list[Example]:
        if split not in self.splits:
            raise PeftrunError(f"spider: unknown split {split!r}; known: {', '.join(self.splits)}")
        rows, where = self._rows(split)
        schemas = self.schemas(split)
        examples, serialized = [], {}
        for i, row in enumerate(rows):
            if not isinstance(row, dict):
                continue
            question, query, db_id = (str(row.get(k) or "").strip() for k in ("question", "query", "db_id"))
            if not question or not query or db_id not in schemas:
                continue
            if db_id not in serialized:
                serialized[db_id] = schemas[db_id].serialize(self.cfg.with_keys)
            target = " ".join(query.split())
            source = f"{' '.join(question.split())} | {db_id} | {serialized[db_id]}"
            examples.append(Example(f"{split}-{i}", source, target, (target,), {"db_id": db_id, "question": question,
                                                                         "split": split}))
        warn_skipped(len(rows) - len(examples), len(rows), where, "no question, query or known db_id")
        return self.cap(examples, split)

    def score(self, predictions: list[str], examples: list[Example]) -> dict[str, float]:
        """Exact set match by hardness and execution accuracy (see the module doc)."""
        from peftrun.metrics.spider import SpiderEvaluator

        if len(predictions) != len(examples):
            raise PeftrunError(f"spider: {len(predictions)} predictions for {len(examples)} examples")
        split = str((examples[0].meta or {}).get("split", "validation")) if examples else "validation"
        evaluator = SpiderEvaluator(self.schemas(split), self.database_dir(split))
        triples = [(p, e.target, str((e.meta or {})["db_id"])) for p, e in zip(predictions, examples, strict=True)]
        return self.select_metrics(evaluator.evaluate(triples)[0])
