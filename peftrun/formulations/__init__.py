"""Formulations: how a task meets a backbone. One object per formulation, one protocol (`Formulation`):

    name            "text" | "classification" | "candidates" | "token" | "rank"
    backbone_head   the `load_backbone(head=...)` it needs ("lm", "classification", "token")
    num_labels      num_labels of that head (None for "lm")
    trains_new_head whether the head is new (random) and trains with every method
    training_data(backbone, examples, record) -> (dataset, collator)
    trainer()       -> (Trainer class, extra kwargs)
    predict(backbone, examples, split, record, progress) -> (prediction strings for task.score,
                    per-example extra fields for predictions.jsonl, or None)
The choice of formulation is made before any model is loaded (peftrun/formulation.py::resolve_formulation);
`build_formulation` turns it into the object. `Prompting` carries the prompt config's builder and demonstration
pool to the formulations that read prompts (text, rank).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass
class Prompting:
    """A run's prompt construction: builder (peftrun/prompting/build.py), the demonstration pool, the layout
    (natural: prompting a frozen model; else the trained layout of peftrun/data.py)."""

    builder: Any
    pool: list[Any] = field(default_factory=list)
    natural: bool = False


class Formulation(Protocol):
    name: str
    backbone_head: str
    trains_new_head: bool

    def num_labels(self) -> int | None: ...

    def training_data(self, backbone: Any, examples: list[Any], record: dict[str, Any]) -> tuple[Any, Any]: ...

    def trainer(self) -> tuple[type, dict[str, Any]]: ...

    def predict(self, backbone: Any, examples: list[Any], split: str, record: dict[str, Any],
                progress: Any) -> tuple[list[str], list[dict[str, Any]] | None]: ...


def build_formulation(name: str, cfg: Any, task: Any, prompting: Prompting | None) -> Formulation:
    """The formulation object for a resolved formulation name."""
    if name == "text":
        from peftrun.formulations.text import TextFormulation

        return TextFormulation(cfg, task, prompting)
    if name == "rank":
        from peftrun.formulations.rank import RankFormulation

        return RankFormulation(cfg, task, prompting)
    from peftrun.formulations.head import HeadFormulation

    return HeadFormulation(cfg, task, name)
