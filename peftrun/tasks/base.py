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
    meta: task-specific extras (e.g. raw MR, category), JSON-serialisable.
    """

    id: str
    source: str
    target: str
    references: tuple[str, ...]
    meta: dict[str, Any] | None = None


class Task(ABC):
    """A task family instance built from a TaskConfig (`cfg`) and the shared data dir."""

    name: str = ""

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
    return TASKS[cfg.name](cfg, data_dir)
