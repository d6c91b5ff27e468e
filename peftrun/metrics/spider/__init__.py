"""Spider text-to-SQL evaluation: the official exact set match (by hardness level) and safe execution accuracy.

schema.py   tables.json -> names, official column ids, foreign-key map, schema serialisation
parser.py   SQL -> the official SQL structure (process_sql.py semantics)
match.py    normalisation, component-wise exact set match, hardness (evaluation.py semantics)
execute.py  read-only, bounded execution of untrusted SQL and result comparison
evaluate.py the evaluator over (prediction, gold, db_id) triples and the summary metrics
"""

from peftrun.metrics.spider.evaluate import SpiderEvaluator, Verdict, summarize
from peftrun.metrics.spider.execute import ExecLimits, QueryResult, execution_match, results_equal, run_query
from peftrun.metrics.spider.match import HARDNESS_LEVELS, components, exact_match, hardness, normalize
from peftrun.metrics.spider.parser import SpiderParseError, parse_sql, tokenize
from peftrun.metrics.spider.schema import DbSchema, load_tables

__all__ = [
    "HARDNESS_LEVELS", "DbSchema", "ExecLimits", "QueryResult", "SpiderEvaluator", "SpiderParseError", "Verdict",
    "components", "exact_match", "execution_match", "hardness", "load_tables", "normalize", "parse_sql",
    "results_equal", "run_query", "summarize", "tokenize",
]  # fmt: skip
