"""The task interface: examples in, metrics out. Tasks never import methods (DESIGN.md)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from peftrun.errors import PeftrunError


@dataclass(frozen=True)
class Example:
    """One model input.

    id: stable identifier within the split (used in predictions.jsonl and for re-scoring).
    source: the linearised input text the model reads.
    target: the text to train on (one reference).
    references: every reference for this input, for multi-reference scoring.
    meta: task-specific extras (e.g. raw MR, category), JSON-serialisable. Tasks with a head formulation
        (`Task.head`) also put there what the head needs: "label" (int gold class, an index into
        `Task.label_names`), "text_a" / "text_b" (the encoder's text pair), and for candidate scoring
        "candidates" (one text_b per candidate; "label" is the correct one's index); for token tagging "tokens"
        and "tags".
    """

    id: str
    source: str
    target: str
    references: tuple[str, ...]
    meta: dict[str, Any] | None = None


BUILTIN = "builtin"  # task.data_dir value selecting a task's tiny built-in sample (tests, offline smoke runs)
FORMULATIONS = ("auto", "text", "head")  # task.formulation


class Task(ABC):
    """A task family instance built from a TaskConfig (`cfg`) and the shared data dir.

    head: the task's formulation for a classification head on an encoder, None for generation-only tasks:
    "classification" (a text pair -> one of `label_names`), "candidates" (score each candidate of
    meta["candidates"], pick the best; COPA, ReCoRD) or "token" (one tag per word of meta["tokens"]).
    label_names: the class names, index = meta["label"]; `score` also accepts them as predictions.
    options: the task-specific TaskConfig keys this task reads (fields marked `task_option` in peftrun/config.py);
    any other task option set to a non-default value is refused by `build_task`, and a task YAML holds only the
    common keys and its own options.
    """

    name: str = ""
    options: tuple[str, ...] = ()
    head: str | None = None
    label_names: tuple[str, ...] = ()

    def __init__(self, cfg: Any, data_dir: str | None = None) -> None:
        self.cfg = cfg
        self.data_dir = data_dir  # PathsConfig.data_dir, for tasks that fall back to shared files

    @abstractmethod
    def load(self, split: str, grouped: bool) -> list[Example]:
        """Examples of `split`. grouped=False: one example per (input, reference) pair, for training;
        grouped=True: one example per distinct input with all its references, in the order of first
        appearance, for evaluation and re-scoring."""

    @abstractmethod
    def score(self, predictions: list[str], examples: list[Example]) -> dict[str, float]:
        """The task's official metrics for predictions aligned with grouped examples."""

    def formulation(self, backbone_kind: str) -> str:
        """"text" (generate the target) or `self.head`, from task.formulation and the backbone kind
        ("decoder" | "encoder-decoder" | "encoder"): auto = the head for encoders, text otherwise."""
        choice = self.cfg.formulation
        if choice not in FORMULATIONS:
            raise PeftrunError(f"task.formulation={choice!r}; known: {', '.join(FORMULATIONS)}")
        if choice == "auto":
            choice = "head" if backbone_kind == "encoder" else "text"
        if choice == "head":
            if self.head is None:
                raise PeftrunError(f"task {self.name!r} has no head formulation; use task.formulation=text with a "
                                   "decoder or encoder-decoder backbone (e.g. backbone=tiny-t5)")
            return self.head
        if backbone_kind == "encoder":
            raise PeftrunError("task.formulation=text generates text, which an encoder backbone cannot; use "
                               "task.formulation=auto or a decoder / encoder-decoder backbone")
        return "text"

    def select_metrics(self, scores: dict[str, float]) -> dict[str, float]:
        """`scores` restricted to task.metrics, in that order (all of them when null); an unknown name is an error."""
        wanted = self.cfg.metrics
        if wanted is None:
            return scores
        if not wanted or any(m not in scores for m in wanted):
            raise PeftrunError(f"{self.name}: task.metrics={list(wanted)} is not a non-empty subset of "
                               f"[{', '.join(scores)}]; set task.metrics=null for all")
        return {m: scores[m] for m in wanted}

    def evaluation_splits(self) -> list[str]:
        """The splits a run evaluates: task.eval_splits (a mixture names one per member and split)."""
        return list(self.cfg.eval_splits)

    def metric_summary(self, metrics: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
        """Extra metric entries computed from all evaluated splits' (a mixture: over templates); none here."""
        return {}

    def cap(self, examples: list[Example], split: str) -> list[Example]:
        """The first task.max_train_examples (train split) or task.max_eval_examples (others) examples."""
        limit = self.cfg.max_train_examples if split == self.cfg.train_split else self.cfg.max_eval_examples
        return examples if limit is None else examples[:limit]


TASKS: dict[str, Callable[..., Task]] = {}


def register_task(name: str) -> Callable[[type[Task]], type[Task]]:
    """Class decorator: make a task available as `task=<name>`; refuses duplicates."""

    def decorator(cls: type[Task]) -> type[Task]:
        if name in TASKS:
            raise ValueError(f"task {name!r} registered twice")
        cls.name = name
        TASKS[name] = cls
        return cls

    return decorator


def build_task(cfg: Any, data_dir: str | None = None) -> Task:
    """The Task named by cfg.name; an unknown name lists the known ones."""
    import peftrun.tasks  # noqa: F401  (registers the built-in tasks)

    if cfg.name not in TASKS:
        raise PeftrunError(f"unknown task {cfg.name!r}; known: {', '.join(sorted(TASKS))} (set task=<name>)")
    check_task_options(cfg, TASKS[cfg.name])
    return TASKS[cfg.name](cfg, data_dir)


def check_task_options(cfg: Any, cls: Any) -> None:
    """Refuse a task option (TaskConfig field marked `task_option`) that the task does not read, when it is set to a
    value other than its default: it would silently do nothing."""
    from dataclasses import MISSING, fields

    from peftrun.config import TaskConfig

    for field in fields(TaskConfig):
        if not field.metadata.get("task_option") or field.name in getattr(cls, "options", ()):
            continue
        default = field.default if field.default is not MISSING else field.default_factory()
        value = getattr(cfg, field.name, default)
        if value != default:
            readers = sorted(name for name, task in TASKS.items() if field.name in getattr(task, "options", ()))
            raise PeftrunError(f"task.{field.name}={value!r}: task {cfg.name!r} does not read it (an option of "
                               f"{', '.join(readers)}); remove it")
