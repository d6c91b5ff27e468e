"""The table-to-text family: structured input -> one sentence or a few, scored by multi-reference BLEU.

A concrete task (e2e.py, dart.py, webnlg.py, synthetic.py) only reads its data into `Group`s, one per
evaluation unit (a distinct E2E MR; a DART / WebNLG entry) with all its references, in file order. This
module turns groups into Examples (grouped or one per reference), applies the example caps, caches parsed
files in-process, reaches the hub, and scores with `peftrun.metrics.generation` in the task's BLEU style.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from peftrun.errors import PeftrunError
from peftrun.tasks.base import Example, Task
from peftrun.tasks.loading import load_hub, require_dir


@dataclass(frozen=True)
class Group:
    """One evaluation unit. key: the raw input (what re-scoring files may name it by); source: linearised."""

    key: str
    source: str
    references: tuple[str, ...]
    meta: dict[str, Any] = field(default_factory=dict)
    rows: tuple[int, ...] = ()  # each reference's position among the file's (input, reference) rows


METRICS = ("bleu", "chrf", "ter")
def group_pairs(pairs: Iterable[tuple[str, str, str, dict[str, Any]]]) -> list[Group]:
    """(key, source, reference, meta) rows -> one Group per distinct key, in order of first appearance."""
    order: list[str] = []
    refs: dict[str, list[str]] = {}
    rows: dict[str, list[int]] = {}
    first: dict[str, tuple[str, dict[str, Any]]] = {}
    for row, (key, source, ref, meta) in enumerate(pairs):
        if key not in refs:
            order.append(key)
            refs[key] = []
            rows[key] = []
            first[key] = (source, meta)
        refs[key].append(ref)
        rows[key].append(row)
    return [Group(k, first[k][0], tuple(refs[k]), first[k][1], tuple(rows[k])) for k in order]


class TableToTextTask(Task):
    """Base of the table-to-text tasks. Subclasses set the class constants and read their data into Groups.

    splits: the split names `load` accepts. bleu_style: "13a" or "webnlg" (see peftrun.metrics.generation).
    data_folder: the task's folder under the shared data dir (for the hint in missing-data errors).
    """

    splits: ClassVar[tuple[str, ...]] = ("train", "validation", "test")
    options: ClassVar[tuple[str, ...]] = ("hub_id", "bleu_lowercase")
    bleu_style: ClassVar[str] = "13a"
    data_folder: ClassVar[str] = ""

    def load(self, split: str, grouped: bool) -> list[Example]:
        if split not in self.splits:
            raise PeftrunError(f"{self.name}: unknown split {split!r}; known: {', '.join(self.splits)} (task.eval_splits / split=)")
        groups = self.groups(split)
        if grouped:
            examples = [
                Example(f"{split}-{i}", g.source, g.references[0], g.references, dict(g.meta))
                for i, g in enumerate(groups)
            ]
        else:
            # one example per (input, reference) row, in the file's row order: task.max_train_examples=N takes the
            # first N rows, as a user reads it (E2E's MRs recur all over its file; in group order the first 160
            # pairs held 13 distinct MRs, the first 160 rows hold 156)
            positioned = [
                (g.rows[j] if len(g.rows) == len(g.references) else (i, j),
                 Example(f"{split}-{i}-{j}", g.source, ref, g.references, dict(g.meta)))
                for i, g in enumerate(groups)
                for j, ref in enumerate(g.references)
            ]
            if all(isinstance(position, int) for position, _ in positioned):
                positioned.sort(key=lambda item: item[0])
            examples = [example for _, example in positioned]
        cap = self.cfg.max_train_examples if split == self.cfg.train_split else self.cfg.max_eval_examples
        return examples if cap is None else examples[:cap]

    def groups(self, split: str) -> list[Group]:
        """All groups of `split` (uncapped): from task.data_dir when set, else from the hub."""
        if self.cfg.data_dir:
            return self.read_local(require_dir(self.cfg.data_dir, self.name), split)
        return self.read_hub(split)

    @abstractmethod
    def read_local(self, data_dir: Path, split: str) -> list[Group]:
        """Groups of `split` from the official files in data_dir (use cached_parse)."""

    @abstractmethod
    def read_hub(self, split: str) -> list[Group]:
        """Groups of `split` from the hub dataset cfg.hub_id (use load_hub)."""

    def hub(self) -> Any:
        return load_hub(self.name, self.cfg.hub_id, self._shared_hint())

    def _shared_hint(self) -> str:
        if self.data_dir and self.data_folder:
            local = Path(self.data_dir).expanduser() / self.data_folder
            if local.is_dir():
                return f", e.g. task.data_dir={local}"
        return ""

    def score(self, predictions: list[str], examples: list[Example]) -> dict[str, float]:
        """task.metrics among bleu, chrf, ter (0-100; null = all three) over grouped examples, BLEU in this task's
        official style. sacrebleu's TER is slow (about 30 ms per hypothesis-reference pair on one CPU core)."""
        if len(predictions) != len(examples):
            raise PeftrunError(f"{self.name}: {len(predictions)} predictions for {len(examples)} examples")
        metrics = list(self.cfg.metrics) if self.cfg.metrics is not None else list(METRICS)
        unknown = [m for m in metrics if m not in METRICS]
        if unknown or not metrics:
            raise PeftrunError(f"{self.name}: task.metrics={metrics} is not a non-empty subset of [{', '.join(METRICS)}]")
        return self._scores(predictions, [e.references for e in examples], metrics)

    def _scores(self, predictions: Sequence[str], references: Sequence[Sequence[str]],
                metrics: Sequence[str]) -> dict[str, float]:
        from peftrun.metrics.generation import generation_scores

        return generation_scores(predictions, references, lowercase=self.cfg.bleu_lowercase, style=self.bleu_style,
                                 metrics=metrics)
