"""FLAN's task names and clusters, and the leakage check of a train / eval task split.

FLAN (Wei et al. 2021) evaluates a task zero-shot only after holding out its whole cluster: no training task may
come from the same source dataset or from the same task cluster (`flan/clusters.json`, 17 clusters of FLAN's
`task_splits.py`). Clusters that overlap in substance are neighbours and are held out together: "reading
comprehension with commonsense" (ReCoRD, CosmosQA) neighbours both reading comprehension and commonsense. Tasks
FLAN lists as collapsible (ANLI r1-r3, MNLI matched / mismatched, ...: `task_splits_extra.json`) are one source.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from peftrun.errors import PeftrunError
from peftrun.prompting.templates import FLAN_TASKS  # peftrun task name -> FLAN task name

NEIGHBOUR_CLUSTERS = {
    "read_comp_and_common_sense": ("reading_comprehension", "common_sense"),
}


def flan_dir(data_dir: str | None) -> Path:
    path = Path(data_dir or "").expanduser() / "instructions" / "flan"
    if not (path / "clusters.json").is_file():
        raise PeftrunError(f"FLAN clusters not found: {path / 'clusters.json'}; set paths.data_dir to the shared data "
                           "(PEFTRUN_DATA_DIR) holding instructions/flan/")
    return path


@cache
def _read(path: str) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def clusters(data_dir: str | None) -> dict[str, list[str]]:
    return _read(str(flan_dir(data_dir) / "clusters.json"))


def collapsible(data_dir: str | None) -> dict[str, list[str]]:
    return _read(str(flan_dir(data_dir) / "task_splits_extra.json"))["collapsible_tasks"]


def flan_name(task: str) -> str:
    """The FLAN name of a peftrun task (its own name when FLAN has none)."""
    return FLAN_TASKS.get(task, task)


def describe(task: str, data_dir: str | None) -> tuple[str, str | None]:
    """(source dataset, FLAN cluster or None) of a peftrun task name or a source dataset's name."""
    name = flan_name(task)
    source = name
    for group, members in collapsible(data_dir).items():
        if name in members:
            source = group
    cluster = next((c for c, members in clusters(data_dir).items() if name in members), None)
    return source, cluster


def _related(a: str | None, b: str | None) -> bool:
    if a is None or b is None:
        return False
    return a == b or b in NEIGHBOUR_CLUSTERS.get(a, ()) or a in NEIGHBOUR_CLUSTERS.get(b, ())


LEAKAGE_RULES = ("cluster", "source", "off")


def check_leakage(train: list[str], evaluate: list[str], data_dir: str | None,
                  sources: dict[str, str] | None = None, rule: str = "cluster") -> None:
    """One PeftrunError line for the first (train, eval) pair sharing a source dataset or, with rule="cluster", a
    FLAN (neighbour) cluster.

    sources: source dataset of tasks named otherwise (Super-NI tasks' "Source" field, e.g. "rte"), whose FLAN
        cluster is then the source's.
    """
    if rule not in LEAKAGE_RULES:
        raise PeftrunError(f"task.mixture.check_leakage={rule!r}; known: {', '.join(LEAKAGE_RULES)}")
    if rule == "off":
        return
    sources = sources or {}

    def info(task: str) -> tuple[str, str | None]:
        return describe(sources.get(task, task), data_dir)

    for t in train:
        t_source, t_cluster = info(t)
        for e in evaluate:
            e_source, e_cluster = info(e)
            if t_source == e_source:
                why = f"the source dataset {t_source!r}"
            elif rule == "cluster" and _related(t_cluster, e_cluster):
                why = (f"the FLAN cluster {t_cluster!r}" if t_cluster == e_cluster
                       else f"neighbouring FLAN clusters {t_cluster!r} / {e_cluster!r}")
            else:
                continue
            raise PeftrunError(f"leakage: training task {t!r} and evaluation task {e!r} share {why}; drop one "
                               "from task.mixture.train / task.mixture.eval (or set task.mixture.check_leakage)")
