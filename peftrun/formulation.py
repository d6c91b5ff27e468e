"""Which formulation a run uses, and whether its backbone can serve it (decided before any model is loaded).

    text   generate the target (peftrun/data.py, peftrun/generate.py): needs a decoder or encoder-decoder
    head   the task's head (Task.head: classification | candidates | token; peftrun/heads.py): needs a family
           whose `Family.kinds` has the backbone head it maps to (BACKBONE_HEAD)
    rank   (task.formulation=rank) score each answer option by its log-likelihood on the LM head, pick the best
           (peftrun/formulations/rank.py): needs a task with options (labels or candidates) and a decoder or
           encoder-decoder
The formulation objects behind one protocol live in peftrun/formulations/.
`Task.formulation` picks from task.formulation and the backbone kind (auto = the head for encoders).
Import-light (no torch): run_experiment calls this among its first checks.
"""

from __future__ import annotations

from typing import Any

from peftrun.errors import PeftrunError

# task head -> the backbone head (`load_backbone(head=...)`, a `Family.kinds` entry) that serves it
BACKBONE_HEAD = {"classification": "classification", "candidates": "classification", "token": "token"}
_DOES = {"classification": "classifies text pairs", "candidates": "scores candidates", "token": "tags tokens"}


RANK = "rank"  # task.formulation value handled here (Task.formulation knows auto | text | head)


def backbone_head(formulation: str) -> str:
    """The `load_backbone` head for a formulation: "lm" for text and rank, else the head's backbone head."""
    return "lm" if formulation in ("text", RANK) else BACKBONE_HEAD[formulation]


def num_outputs(task: Any, formulation: str) -> int | None:
    """`num_labels` of the backbone head: one logit per label, one score per candidate; None for text / rank."""
    if formulation in ("text", RANK):
        return None
    return 1 if formulation == "candidates" else len(task.label_names)


def resolve_formulation(task: Any, backbone_cfg: Any, kind: str) -> str:
    """"text" or the task's head for this backbone, or one PeftrunError line naming the fix.

    kind: the backbone family's kind ("decoder" | "encoder-decoder" | "encoder").
    """
    from peftrun.backbones.families import FAMILIES, get_family

    if task.cfg.formulation == RANK:
        if kind == "encoder":
            raise PeftrunError(f"task.formulation=rank scores options with an LM head, which backbone "
                               f"{backbone_cfg.name!r} (an encoder) has not; use a decoder or encoder-decoder "
                               "backbone (e.g. backbone=tiny-gpt2), or task.formulation=auto")
        if task.head not in ("classification", "candidates"):
            raise PeftrunError(f"task.formulation=rank needs a task with answer options (labels or candidates); "
                               f"task {task.name!r} has none: use task.formulation=text")
        return RANK
    if task.head is None and kind == "encoder":
        raise PeftrunError(
            f"task {task.name!r} generates text but backbone {backbone_cfg.name!r} is an encoder "
            f"({backbone_cfg.family}); use a decoder or encoder-decoder backbone (e.g. backbone=tiny-gpt2, "
            "backbone=tiny-bart)"
        )
    formulation = task.formulation(kind)
    if formulation == "text":
        return formulation
    needed = BACKBONE_HEAD[formulation]
    family = get_family(backbone_cfg.family)
    if needed not in family.kinds:
        usable = sorted(f.name for f in FAMILIES.values() if needed in f.kinds)
        fix = "" if kind == "encoder" else ", or task.formulation=text"
        raise PeftrunError(
            f"task {task.name!r} {_DOES[formulation]} with a {needed} head, which backbone {backbone_cfg.name!r} "
            f"(family {family.name}) does not have; use a backbone of family {' / '.join(usable)} "
            f"(e.g. backbone=tiny-bert){fix}"
        )
    return formulation
