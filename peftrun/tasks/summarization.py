"""Abstractive summarization: XSum (Narayan et al. 2018) and CNN/DailyMail (See et al. 2017, non-anonymised).

Data (first that applies):
- task.data_dir=DIR, per split the first file found of
  `<name>.jsonl`, `<name>.json` (json lines or one JSON list), `<name>.csv` with a document and a summary field
  (document | article | text | source and summary | highlights | target), or the fairseq / BART pair
  `<name>.source` + `<name>.target` (one example per line). `<name>` is the split (train, validation, test) or its
  alias (validation: val, dev). A folder with no split-named file at all but exactly one data file (e.g. the
  shared xsum/sample.json) serves it for every split, with a warning;
- task.data_dir=builtin: four short built-in article/summary pairs for every split (tests, smoke runs);
- task.data_dir=null: the hub (task.hub_id: EdinburghNLP/xsum, abisee/cnn_dailymail:3.0.0).
Rows with an empty document or summary are skipped and counted in one warning. Splits follow the papers:
train / validation / test (the papers report test; eval_splits says which to score).

Format, the same for every backbone family: source = the document (whitespace collapsed), target = the summary;
the data pipeline adds each family's layout (GPT-2: source [EOS] target; BART / T5: encoder source, decoder
target). No task prefix is added (T5's multi-task checkpoints were trained with "summarize: "; fine-tuning does not
need it). Long documents are cut to task.max_source_length tokens by the data pipeline, which counts the
truncations in the run record.

Metrics (0-100): ROUGE-1/2/L/Lsum F-measure with Porter stemming (peftrun.metrics.rouge; rougeLsum on sentences
split by its offline splitter) and corpus BLEU (sacrebleu, 13a).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, ClassVar

from peftrun.errors import PeftrunError
from peftrun.tasks.base import BUILTIN, Example, Task, register_task
from peftrun.tasks.loading import (
    DataFileError,
    cached_parse,
    hub_split,
    load_hub,
    read_csv_rows,
    read_json,
    read_json_lines,
    read_text,
    require_dir,
    warn_skipped,
)

log = logging.getLogger(__name__)
DOCUMENT_FIELDS = ("document", "article", "text", "source")
SUMMARY_FIELDS = ("summary", "highlights", "target")
SPLIT_NAMES = {"train": ("train",), "validation": ("validation", "val", "dev"), "test": ("test",)}
DATA_SUFFIXES = (".jsonl", ".json", ".csv")

BUILTIN_PAIRS = (
    ("The council voted on Tuesday to close the old library on Mill Road. Officials said the building needed "
     "repairs costing more than two million pounds. A new library will open in the town centre next year.",
     "A council has voted to close a library because repairs would cost too much."),
    ("Heavy rain caused flooding across the county overnight. Several roads were closed and a school was shut. "
     "Forecasters expect more rain on Friday.",
     "Flooding has closed roads and a school after a night of heavy rain."),
    ("The city's football club has signed a new striker from Spain. The 24-year-old joined on a three-year "
     "contract. The manager said he was delighted with the signing.",
     "A football club has signed a Spanish striker on a three-year deal."),
    ("Scientists have found a new species of frog in the rainforest. The tiny frog is smaller than a fingernail. "
     "Researchers say the area must be protected.",
     "A frog smaller than a fingernail has been discovered in a rainforest."),
)  # fmt: skip


def _field(row: dict[str, Any], names: tuple[str, ...]) -> str:
    for name in names:
        value = row.get(name)
        if isinstance(value, str) and value.strip():
            return value
    return ""


def read_pairs(path: Path, task: str = "summarization") -> tuple[list[tuple[str, str]], int]:
    """((document, summary) pairs, rows that are not JSON objects) of a jsonl / json / csv file."""
    rows: list[Any]
    if path.suffix == ".csv":
        rows, bad = read_csv_rows(path, task, dict_rows=True), 0
        header = set(rows[0]) if rows else set()
        if not header & set(DOCUMENT_FIELDS) or not header & set(SUMMARY_FIELDS):
            raise DataFileError(task, path, f"has columns {sorted(str(h) for h in header)[:6]}, expected a document "
                                f"({' | '.join(DOCUMENT_FIELDS)}) and a summary ({' | '.join(SUMMARY_FIELDS)}) column", 1)
    elif (text := read_text(path, task)).lstrip().startswith("["):
        rows, bad = read_json(path, task, list, "a JSON list of objects", text=text), 0
    else:
        rows, bad = read_json_lines(path, task, text=text)
    objects = [r for r in rows if isinstance(r, dict)]
    keys = {k for r in objects for k in r}
    if not objects or not keys & set(DOCUMENT_FIELDS) or not keys & set(SUMMARY_FIELDS):
        found = "none an object" if not objects else f"fields {sorted(str(k) for k in keys)[:6]}"
        raise DataFileError(task, path, f"has no document/summary rows ({len(rows) + bad} rows, {found})",
                            fix=f"give rows with a document field ({' | '.join(DOCUMENT_FIELDS)}) and a summary "
                                f"field ({' | '.join(SUMMARY_FIELDS)})")
    return [(_field(r, DOCUMENT_FIELDS), _field(r, SUMMARY_FIELDS)) for r in objects], bad + len(rows) - len(objects)


def read_source_target(source: Path, target: Path, task: str = "summarization") -> tuple[list[tuple[str, str]], int]:
    documents = read_text(source, task).splitlines()
    summaries = read_text(target, task).splitlines()
    if len(documents) != len(summaries):
        raise PeftrunError(f"{source} has {len(documents)} lines but {target} has {len(summaries)}; they must align")
    return list(zip(documents, summaries, strict=True)), 0


class SummarizationTask(Task):
    """Base of xsum and cnn_dm; they differ in hub ids, lengths and generation settings (their YAMLs)."""

    splits: ClassVar[tuple[str, ...]] = ("train", "validation", "test")
    options: ClassVar[tuple[str, ...]] = ("hub_id",)

    def load(self, split: str, grouped: bool) -> list[Example]:
        if split not in self.splits:
            raise PeftrunError(f"{self.name}: unknown split {split!r}; known: {', '.join(self.splits)}")
        pairs, bad, where = self.pairs(split)
        kept = [(" ".join(d.split()), s.strip()) for d, s in pairs if d.strip() and s.strip()]
        warn_skipped(len(pairs) - len(kept) + bad, len(pairs) + bad, where, "empty document or summary")
        examples = [Example(f"{split}-{i}", doc, summary, (summary,), {}) for i, (doc, summary) in enumerate(kept)]
        return self.cap(examples, split)

    def pairs(self, split: str) -> tuple[list[tuple[str, str]], int, str]:
        """((document, summary) pairs, unreadable rows, where) of a split."""
        if self.cfg.data_dir == BUILTIN:
            return list(BUILTIN_PAIRS), 0, f"built-in {self.name} sample"
        if self.cfg.data_dir:
            folder = require_dir(self.cfg.data_dir, self.name)
            files, read = self._local(folder, split)
            pairs, bad = cached_parse(self.name, split, files, read)  # type: ignore[arg-type]
            return pairs, bad, str(files[0])
        dataset = load_hub(self.name, self.cfg.hub_id, "")
        rows = hub_split(dataset, split, self.name, str(self.cfg.hub_id))
        return [(_field(r, DOCUMENT_FIELDS), _field(r, SUMMARY_FIELDS)) for r in rows], 0, f"hub {self.cfg.hub_id}"

    def _local(self, folder: Path, split: str) -> tuple[list[Path], Any]:
        for name in SPLIT_NAMES[split]:
            for suffix in DATA_SUFFIXES:
                path = folder / f"{name}{suffix}"
                if path.is_file():
                    return [path], lambda p=path: read_pairs(p, self.name)
            source, target = folder / f"{name}.source", folder / f"{name}.target"
            if source.is_file() and target.is_file():
                return [source, target], lambda s=source, t=target: read_source_target(s, t, self.name)
        split_named = any(p.stem in names for p in folder.iterdir() for names in SPLIT_NAMES.values())
        singles = sorted(p for p in folder.iterdir() if p.suffix in DATA_SUFFIXES and p.is_file())
        if len(singles) == 1 and not split_named:
            log.warning("%s: no %s file in %s; using its only data file %s for split %r", self.name, split, folder,
                        singles[0].name, split)
            return singles, lambda: read_pairs(singles[0], self.name)
        names = ", ".join(f"{n}{{{','.join(DATA_SUFFIXES)}}}" for n in SPLIT_NAMES[split])
        raise PeftrunError(f"{self.name}: no file for split {split!r} in {folder} (looked for {names} and "
                           f"{SPLIT_NAMES[split][0]}.source/.target); set task.data_dir to the folder of the split files")

    def score(self, predictions: list[str], examples: list[Example]) -> dict[str, float]:
        """ROUGE-1/2/L/Lsum (stemmed F-measure) and BLEU, 0-100."""
        from peftrun.metrics.generation import corpus_bleu
        from peftrun.metrics.rouge import rouge_scores

        if len(predictions) != len(examples):
            raise PeftrunError(f"{self.name}: {len(predictions)} predictions for {len(examples)} examples")
        references = [e.references for e in examples]
        return self.select_metrics({**rouge_scores(predictions, references), "bleu": corpus_bleu(predictions, references)})


@register_task("xsum")
class XSum(SummarizationTask):
    """XSum: one-sentence summaries of BBC articles."""


@register_task("cnn_dm")
class CnnDailyMail(SummarizationTask):
    """CNN/DailyMail 3.0.0: multi-sentence highlights of news articles."""
