"""Spider: exact set match verdicts derived from the official definition, hardness, the official example files,
safe execution of untrusted SQL, result comparison, and the task's loading and scoring."""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from peftrun.config import TaskConfig
from peftrun.errors import PeftrunError
from peftrun.metrics.spider import (
    DbSchema,
    ExecLimits,
    SpiderEvaluator,
    SpiderParseError,
    load_tables,
    parse_sql,
    results_equal,
    run_query,
    tokenize,
)
from peftrun.tasks.spider import BUILTIN_TABLES, SpiderTask
from tests.conftest import require_data

SCHEMAS = {e["db_id"]: DbSchema.from_entry(e) for e in BUILTIN_TABLES}  # concert_singer and pets_1 (Spider's, cut)

# (db, gold, prediction, exact set match?, why) -- verdicts from the official evaluation.py definition.
CASES = [
    ("concert_singer", "SELECT T1.name FROM singer AS T1 WHERE T1.age  >  30", "select name from singer where age > 30",
     True, "table alias"),
    ("concert_singer", "SELECT name FROM singer", "select NAME   from SINGER ;", True, "case, spacing, semicolon"),
    ("concert_singer", "SELECT name ,  country FROM singer", "SELECT country, name FROM singer", True, "select order"),
    ("concert_singer", "SELECT name FROM singer WHERE age  >  30 AND country  =  'France'",
     "SELECT name FROM singer WHERE country = 'Spain' AND age > 45", True, "condition order and literals"),
    ("concert_singer", "SELECT name FROM singer WHERE age  >  30", "SELECT name FROM singer WHERE age >= 30", False,
     "comparison operator"),
    ("concert_singer", "SELECT name FROM singer WHERE age  >  30 AND country  =  'France'",
     "SELECT name FROM singer WHERE age > 30 OR country = 'France'", False, "AND vs OR"),
    ("concert_singer", "SELECT DISTINCT country FROM singer", "SELECT country FROM singer", True,
     "DISTINCT is ignored (DISABLE_DISTINCT)"),
    ("concert_singer", "SELECT count(DISTINCT country) FROM singer", "SELECT count(country) FROM singer", True,
     "DISTINCT in an aggregate is ignored"),
    ("pets_1", "SELECT fname FROM student WHERE stuid IN (SELECT DISTINCT stuid FROM has_pet)",
     "SELECT fname FROM student WHERE stuid IN (SELECT stuid FROM has_pet)", False,
     "a WHERE sub-query is compared as parsed, DISTINCT included"),
    ("pets_1", "SELECT fname FROM student WHERE stuid NOT IN (SELECT stuid FROM has_pet)",
     "select fname from student where stuid not in (select T1.stuid from has_pet as T1)", True,
     "nested query with an alias inside"),
    ("pets_1", "SELECT fname FROM student WHERE stuid NOT IN (SELECT stuid FROM has_pet)",
     "SELECT fname FROM student WHERE stuid IN (SELECT stuid FROM has_pet)", False, "NOT IN vs IN"),
    ("pets_1", "SELECT fname FROM student WHERE stuid IN (SELECT stuid FROM has_pet)",
     "SELECT T1.fname FROM student AS T1 JOIN has_pet AS T2 ON T1.stuid = T2.stuid", False, "nested query vs join"),
    ("concert_singer", "SELECT name FROM stadium ORDER BY capacity DESC LIMIT 1",
     "SELECT name FROM stadium ORDER BY capacity DESC LIMIT 3", True, "LIMIT value ignored"),
    ("concert_singer", "SELECT name FROM stadium ORDER BY capacity DESC LIMIT 1",
     "SELECT name FROM stadium ORDER BY capacity ASC LIMIT 1", False, "ORDER BY direction"),
    ("concert_singer", "SELECT name FROM stadium ORDER BY capacity DESC LIMIT 1",
     "SELECT name FROM stadium ORDER BY capacity DESC", False, "LIMIT in one only"),
    ("pets_1", "SELECT T1.stuid FROM student AS T1 JOIN has_pet AS T2 ON T1.stuid  =  T2.stuid",
     "SELECT T2.stuid FROM student AS T1 JOIN has_pet AS T2 ON T1.stuid = T2.stuid", True,
     "columns joined by a foreign key are one column"),
    ("pets_1", "SELECT T1.fname FROM student AS T1 JOIN has_pet AS T2 ON T1.stuid  =  T2.stuid",
     "SELECT T1.fname FROM student AS T1 JOIN has_pet AS T2 ON T1.age = T2.petid", True,
     "join conditions are not compared"),
    ("concert_singer", "SELECT count(*) FROM singer", "select count(*) from stadium", False, "another table"),
    ("concert_singer", "SELECT name FROM singer WHERE age  >  30 INTERSECT SELECT name FROM singer WHERE country  =  'a'",
     "SELECT name FROM singer WHERE age > 30 UNION SELECT name FROM singer WHERE country = 'a'", False,
     "INTERSECT vs UNION"),
    ("concert_singer", "SELECT name FROM singer WHERE age > 30 AND country = 'a' INTERSECT SELECT name FROM singer WHERE "
     "age < 60", "SELECT name FROM singer WHERE country = 'b' AND age > 20 INTERSECT SELECT name FROM singer WHERE "
     "age < 50", True, "IUE parts match recursively, as sets"),
    ("concert_singer", "SELECT count(*) FROM singer", "SELECT count(name) FROM singer", False, "count(*) vs count(col)"),
    ("concert_singer", "SELECT country ,  count(*) FROM singer GROUP BY country HAVING count(*)  >  2",
     "SELECT country, count(*) FROM singer GROUP BY country HAVING count(*) > 5", True, "HAVING literal ignored"),
    ("concert_singer", "SELECT country ,  count(*) FROM singer GROUP BY country HAVING count(*)  >  2",
     "SELECT country, count(*) FROM singer GROUP BY country HAVING count(*) < 2", False, "HAVING operator"),
    ("concert_singer", "SELECT name FROM singer WHERE age  >  30", "SELECT name FROM singer WHERE", False,
     "a prediction cut after WHERE (parses with an empty WHERE)"),
    ("concert_singer", "SELECT name FROM singer WHERE age  >  30", "SELECT name FROM singer WHERE age > > 30", False,
     "a prediction that does not parse"),
    ("concert_singer", "SELECT name FROM singer WHERE age BETWEEN 20 AND 30",
     "SELECT name FROM singer WHERE age >= 20 AND age <= 30", False, "BETWEEN vs two comparisons"),
    ("concert_singer", "SELECT name FROM singer WHERE country LIKE '%an%'",
     "SELECT name FROM singer WHERE country = 'France'", False, "LIKE vs ="),
    ("concert_singer", "SELECT name FROM singer WHERE age  >  30", "SELECT name FROM singer WHERE age > singer_id", True,
     "a compared column is a value, and values are ignored"),
    ("concert_singer", "SELECT * FROM singer", "SELECT name, country, age FROM singer", False, "* vs columns"),
    ("concert_singer", "SELECT T2.name FROM concert AS T1 JOIN stadium AS T2 ON T1.stadium_id = T2.stadium_id",
     "SELECT stadium.name FROM concert, stadium WHERE concert.stadium_id = stadium.stadium_id", False,
     "a comma join is outside the official parser's SQL subset"),
]

# (db, gold, hardness) -- counted by hand with the official component rules.
HARDNESS = [
    ("concert_singer", "SELECT count(*) FROM singer", "easy"),  # no component
    ("concert_singer", "SELECT name ,  country FROM singer WHERE age  >  30", "medium"),  # where; 2 columns
    ("concert_singer", "SELECT name FROM stadium ORDER BY capacity DESC LIMIT 1", "medium"),  # order + limit
    ("pets_1", "SELECT count(*) , T1.stuid FROM student AS T1 JOIN has_pet AS T2 ON T1.stuid = T2.stuid GROUP BY "
     "T1.stuid", "medium"),  # group + 1 join; 2 columns
    ("pets_1", "SELECT fname FROM student WHERE stuid NOT IN (SELECT stuid FROM has_pet)", "hard"),  # where; 1 nested
    ("concert_singer", "SELECT name FROM singer WHERE age > 30 INTERSECT SELECT name FROM singer WHERE age < 9", "hard"),
    ("pets_1", "SELECT T1.fname FROM student AS T1 JOIN has_pet AS T2 ON T1.stuid = T2.stuid WHERE T1.age > 20 "
     "INTERSECT SELECT fname FROM student WHERE age < 30", "extra"),  # join + where, and a nested query
    ("concert_singer", "SELECT name FROM singer WHERE age > 30 AND country = 'a' ORDER BY age LIMIT 1", "hard"),  # 3
]


@pytest.mark.parametrize("db, gold, pred, expected, why", CASES, ids=[c[4] for c in CASES])
def test_exact_set_match_verdicts(db: str, gold: str, pred: str, expected: bool, why: str) -> None:
    assert SpiderEvaluator(SCHEMAS).verdict(pred, gold, db).exact is expected


@pytest.mark.parametrize("db, gold, level", HARDNESS)
def test_hardness(db: str, gold: str, level: str) -> None:
    assert SpiderEvaluator(SCHEMAS).verdict(gold, gold, db).hardness == level


def test_summary_counts_levels_and_parse_errors() -> None:
    metrics, verdicts = SpiderEvaluator(SCHEMAS).evaluate([(p, g, db) for db, g, p, _, _ in CASES])
    assert metrics["exact_match"] == pytest.approx(100 * sum(c[3] for c in CASES) / len(CASES))
    assert sum(metrics[f"count_{level}"] for level in ("easy", "medium", "hard", "extra")) == len(CASES)
    assert metrics["pred_parse_errors"] == 2 and metrics["gold_parse_errors"] == 0 and "exec_accuracy" not in metrics


def test_tokenizer_keeps_values_and_merges_operators() -> None:
    assert tokenize("SELECT T1.Name FROM singer WHERE name = 'Joe Sharp' AND age>=-4.5") == [
        "select", "t1.name", "from", "singer", "where", "name", "=", '"Joe Sharp"', "and", "age", ">=", "-4.5"]


# -- the official files --------------------------------------------------------------------------------------
def _pairs(gold: Path, pred: Path) -> list[tuple[str, str, str]]:
    golds = [line.rstrip("\n").split("\t") for line in gold.open() if line.strip()]
    preds = [line.strip().split("\t")[0] for line in pred.open() if line.strip()]
    return [(p, g[0], g[1]) for p, g in zip(preds, golds, strict=True)]


def test_official_dev_hardness_distribution() -> None:
    spider = require_data("spider")
    evaluator = SpiderEvaluator(load_tables(spider / "tables.json"))
    golds = [line.rstrip("\n").split("\t") for line in (spider / "dev_gold.sql").open() if line.strip()]
    metrics, _ = evaluator.evaluate([(g, g, db) for g, db in golds])
    # Spider dev's published split by hardness: 248 easy, 446 medium, 174 hard, 166 extra.
    assert [metrics[f"count_{lv}"] for lv in ("easy", "medium", "hard", "extra")] == [248, 446, 174, 166]
    assert metrics["exact_match"] == 100.0 and metrics["gold_parse_errors"] == 0


def test_official_example_pairs() -> None:
    pairs = require_data("spider", "eval_pairs")
    evaluator = SpiderEvaluator(load_tables(pairs.parent / "tables.json"))
    # Totals of taoyds/spider evaluation.py (--etype match) on these files, its tokenizer being nltk's.
    example, _ = evaluator.evaluate(_pairs(pairs / "gold_example.txt", pairs / "pred_example.txt"))
    assert round(example["exact_match"] * 1034 / 100) == 721
    perturbed, _ = evaluator.evaluate(_pairs(pairs / "perturbed_gold.txt", pairs / "perturbed_pred.txt"))
    assert round(perturbed["exact_match"] * 838 / 100) == 369


def test_tokenizer_agrees_with_nltk_on_official_queries() -> None:
    treebank = pytest.importorskip("nltk.tokenize").NLTKWordTokenizer()
    spider = require_data("spider")

    def official(query: str) -> list[str]:  # process_sql.tokenize with nltk's word tokenizer
        text = query.replace("'", '"')
        quotes = [i for i, ch in enumerate(text) if ch == '"']
        values = {}
        for i in range(len(quotes) - 1, 0, -2):
            key = f"__val_{quotes[i - 1]}_{quotes[i]}__"
            values[key] = text[quotes[i - 1] : quotes[i] + 1]
            text = text[: quotes[i - 1]] + key + text[quotes[i] + 1 :]
        toks = [values.get(t.lower(), t.lower()) for t in treebank.tokenize(text)]
        for i in range(len(toks) - 1, 0, -1):
            if toks[i] == "=" and toks[i - 1] in ("!", ">", "<"):
                toks[i - 1 : i + 1] = [toks[i - 1] + "="]
        return toks

    files = ("dev_gold.sql", "eval_pairs/pred_example.txt", "eval_pairs/perturbed_pred.txt")
    queries = [line.split("\t")[0].strip() for name in files for line in (spider / name).open() if line.strip()]
    assert len(queries) == 1034 + 1034 + 838
    assert [q for q in queries if tokenize(q) != official(q)] == []


# -- execution -------------------------------------------------------------------------------------------------
def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture()
def concert_db(tmp_path: Path) -> Path:
    """A writable database at <tmp>/database/concert_singer/concert_singer.sqlite."""
    path = tmp_path / "database" / "concert_singer" / "concert_singer.sqlite"
    path.parent.mkdir(parents=True)
    conn = sqlite3.connect(path)
    conn.executescript(
        "CREATE TABLE stadium (Stadium_ID int, Name text, Capacity int);"
        "CREATE TABLE singer (Singer_ID int, Name text, Country text, Age int);"
        "INSERT INTO stadium VALUES (1, 'Hampden', 52500), (2, 'Balmoor', 4000), (3, 'Glebe', 3960);"
        "INSERT INTO singer VALUES (1, 'Joe', 'Netherlands', 52), (2, 'Tribal', 'United States', 29),"
        " (3, 'Timbaland', 'United States', 32), (4, 'Justin', 'France', 29);"
    )
    conn.commit()
    conn.close()
    return path


DESTRUCTIVE = [
    "DROP TABLE singer", "DELETE FROM singer", "UPDATE singer SET Name = 'x'", "INSERT INTO singer VALUES (9, 'x', 'y', 1)",
    "ATTACH DATABASE '{evil}' AS evil", "CREATE TABLE t (x)", "PRAGMA journal_mode = WAL", "VACUUM",
    "VACUUM INTO '{evil}'", "SELECT 1; DROP TABLE singer", "BEGIN IMMEDIATE", "ALTER TABLE singer ADD COLUMN x",
    "SELECT load_extension('x')", "REINDEX", "ANALYZE",
]


def test_destructive_sql_leaves_the_database_byte_identical(concert_db: Path, tmp_path: Path) -> None:
    before, files = _digest(concert_db), sorted(p.name for p in concert_db.parent.iterdir())
    evil = tmp_path / "evil.sqlite"
    for sql in DESTRUCTIVE:
        result = run_query(concert_db, sql.format(evil=evil))
        assert not result.ok and result.rows is None, sql
    assert _digest(concert_db) == before
    assert sorted(p.name for p in concert_db.parent.iterdir()) == files and not evil.exists()
    assert run_query(concert_db, "SELECT count(*) FROM singer").rows == [(4,)]
    control = sqlite3.connect(concert_db)  # without the guards the same file is writable: the test can fail
    control.execute("DELETE FROM singer")
    control.commit()
    control.close()
    assert _digest(concert_db) != before


def test_runaway_queries_stop_at_their_limits(concert_db: Path) -> None:
    runaway = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"
    before = _digest(concert_db)
    started = time.monotonic()
    steps = run_query(concert_db, runaway, ExecLimits(timeout_s=30.0, max_steps=2_000_000))
    assert "step limit" in (steps.error or "") and time.monotonic() - started < 10.0
    started = time.monotonic()
    timed = run_query(concert_db, runaway, ExecLimits(timeout_s=0.3, max_steps=10**15))
    elapsed = time.monotonic() - started
    assert "time limit" in (timed.error or "") and 0.3 <= elapsed < 5.0
    rows = run_query(concert_db, "SELECT a.Name FROM singer a, singer b, singer c", ExecLimits(max_rows=10))
    assert "more than 10 rows" in (rows.error or "")
    assert _digest(concert_db) == before


def test_shared_department_store_copy_survives(tmp_path: Path) -> None:
    source = require_data("spider", "database", "department_store", "department_store.sqlite")
    copy = tmp_path / "department_store.sqlite"
    shutil.copyfile(source, copy)
    before = _digest(copy)
    for sql in DESTRUCTIVE:
        assert not run_query(copy, sql.format(evil=tmp_path / "evil.sqlite")).ok, sql
    assert run_query(copy, "SELECT count(*) FROM Staff").rows == [(15,)]
    assert _digest(copy) == before and sorted(p.name for p in tmp_path.iterdir()) == ["department_store.sqlite"]


def test_results_equal_as_the_test_suite_evaluation() -> None:
    gold = [(1, "a"), (2, "b"), (2, "b")]
    assert results_equal(gold, [("b", 2), ("a", 1), ("b", 2)], order_matters=False)  # columns and rows permuted
    assert not results_equal(gold, [("b", 2), ("a", 1), ("a", 1)], order_matters=False)  # multisets differ
    assert not results_equal(gold, [(2, "b"), (1, "a"), (2, "b")], order_matters=True)
    assert results_equal(gold, [("a", 1), ("b", 2), ("b", 2)], order_matters=True)
    assert results_equal([], [], order_matters=False) and not results_equal([(1,)], [(1, 1)], order_matters=False)


def test_execution_accuracy_where_the_database_exists(concert_db: Path) -> None:
    evaluator = SpiderEvaluator(SCHEMAS, concert_db.parent.parent)
    triples = [
        ("SELECT name FROM singer WHERE age < 30", "SELECT name FROM singer WHERE age  <  30", "concert_singer"),
        ("SELECT name FROM singer WHERE age <= 29", "SELECT name FROM singer WHERE age  <  30", "concert_singer"),
        ("SELECT name FROM singer ORDER BY age", "SELECT name FROM singer ORDER BY age DESC", "concert_singer"),
        ("DROP TABLE singer", "SELECT count(*) FROM singer", "concert_singer"),
        ("SELECT fname FROM student", "SELECT fname FROM student", "pets_1"),  # no database: not executed
    ]
    metrics, verdicts = evaluator.evaluate(triples)
    assert [v.execution for v in verdicts] == [True, True, False, False, None]
    assert [v.exact for v in verdicts] == [True, False, False, False, True]
    assert metrics["exec_accuracy"] == 50.0 and metrics["exec_examples"] == 4


# -- the task --------------------------------------------------------------------------------------------------
def spider_task(**overrides) -> SpiderTask:
    return SpiderTask(OmegaConf.structured(TaskConfig(name="spider", **overrides)), None)


def test_builtin_task_serialises_the_schema() -> None:
    examples = spider_task(data_dir="builtin").load("validation", grouped=True)
    assert examples[0].source.startswith("How many singers do we have? | concert_singer | stadium : Stadium_ID ,")
    assert examples[0].target == "SELECT count(*) FROM singer"
    keyed = spider_task(data_dir="builtin", with_keys=True).load("validation", grouped=True)
    assert "| foreign keys : concert.Stadium_ID = stadium.Stadium_ID ," in keyed[0].source
    scores = spider_task(data_dir="builtin").score([e.target for e in examples], examples)
    assert scores["exact_match"] == 100.0 and scores["count_hard"] == 1


def test_task_needs_the_official_files() -> None:
    with pytest.raises(PeftrunError, match="hub copies have no schemas"):
        spider_task().load("validation", grouped=True)


def test_task_skips_malformed_rows(tmp_path: Path, caplog) -> None:
    (tmp_path / "tables.json").write_text(json.dumps(list(BUILTIN_TABLES)))
    rows = [{"db_id": "concert_singer", "question": "How many?", "query": "SELECT count(*) FROM singer"},
            {"db_id": "nowhere", "question": "Q?", "query": "SELECT 1"}, {"db_id": "pets_1", "question": "Q?"}]
    (tmp_path / "dev.json").write_text(json.dumps(rows))
    examples = spider_task(data_dir=str(tmp_path)).load("validation", grouped=True)
    assert len(examples) == 1 and "skipped 2 of 3" in caplog.text


def test_shared_dev_set() -> None:
    spider = require_data("spider")
    task = spider_task(data_dir=str(spider), max_eval_examples=50)
    examples = task.load("validation", grouped=True)
    assert len(examples) == 50 and examples[0].meta["db_id"] == "concert_singer"
    scores = task.score([e.target for e in examples], examples)
    assert scores["exact_match"] == 100.0 and "exec_accuracy" not in scores  # dev databases are not shared
    assert parse_sql(examples[0].target, *_names(task, "concert_singer"))["select"][1][0][0] == 3  # count


def _names(task: SpiderTask, db: str) -> tuple[dict[str, list[str]], dict[str, str]]:
    schema = task.schemas("validation")[db]
    return schema.names(), schema.id_map()


# -- hostile predictions and files (issue 11) ----------------------------------------------------------------------
def test_five_hundred_chained_unions_are_an_unparsable_prediction(concert_db: Path) -> None:
    evaluator = SpiderEvaluator(SCHEMAS, concert_db.parent.parent)
    union = " UNION ".join(["SELECT name FROM singer"] * 500)
    nested = "SELECT name FROM singer WHERE age IN " * 200 + "(SELECT age FROM singer" + ")" * 199
    metrics, verdicts = evaluator.evaluate([(union, "SELECT name FROM singer", "concert_singer"),
                                            (nested, "SELECT name FROM singer", "concert_singer")])
    assert [v.pred_parsed for v in verdicts] == [False, False] and not any(v.exact for v in verdicts)
    assert "nests more than" in (verdicts[0].note or "")
    assert metrics["pred_parse_errors"] == 2.0
    with pytest.raises(SpiderParseError):  # the gold side gets the same bound
        parse_sql(union, *_names(spider_task(data_dir="builtin"), "concert_singer"))


def test_db_id_cannot_reach_outside_the_database_folder(concert_db: Path, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere" / "secret" / "secret.sqlite"
    outside.parent.mkdir(parents=True)
    shutil.copyfile(concert_db, outside)
    schema = SCHEMAS["concert_singer"]
    hostile = {name: DbSchema(name, schema.tables, schema.columns) for name in
               (str(outside.parent), "../elsewhere/secret", "..", "/etc")}
    db_dir = concert_db.parent.parent / "inner"
    (db_dir / "concert_singer").mkdir(parents=True)
    shutil.copyfile(concert_db, db_dir / "concert_singer" / "concert_singer.sqlite")
    evaluator = SpiderEvaluator(hostile, db_dir)
    for db_id in hostile:
        assert evaluator.database(db_id) is None, db_id
        verdict = evaluator.verdict("SELECT name FROM singer", "SELECT name FROM singer", db_id)
        assert verdict.execution is None and "plain folder name" in (verdict.db_error or "")
    metrics, _ = evaluator.evaluate([("SELECT name FROM singer", "SELECT name FROM singer", d) for d in hostile])
    assert "exec_accuracy" not in metrics and metrics["exec_db_errors"] == 4.0


def test_a_corrupt_database_is_warned_and_counted(concert_db: Path, caplog) -> None:
    concert_db.write_bytes(b"this is not an sqlite database" * 100)
    evaluator = SpiderEvaluator(SCHEMAS, concert_db.parent.parent)
    triples = [("SELECT name FROM singer", "SELECT name FROM singer", "concert_singer")] * 3
    metrics, verdicts = evaluator.evaluate(triples)
    assert metrics["exec_db_errors"] == 3.0 and "exec_accuracy" not in metrics
    assert all(v.execution is None and str(concert_db) in (v.db_error or "") for v in verdicts)
    assert caplog.text.count(str(concert_db)) == 1  # one warning per database, naming it


def test_corrupt_tables_json_is_one_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / "dev.json").write_text(json.dumps([{"db_id": "x", "question": "q", "query": "SELECT 1"}]))
    (tmp_path / "tables.json").write_text(json.dumps([{"db_id": "x"}]))
    with pytest.raises(PeftrunError, match=rf"{tmp_path / 'tables.json'}: entry 0 is not a tables.json schema"):
        spider_task(data_dir=str(tmp_path)).load("validation", grouped=True)
