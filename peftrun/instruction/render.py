"""Members of a mixture rendered through instruction templates (FLAN 2021; task.mixture.templates=flan).

Training: each member's examples go round-robin over its templates in a seeded order (template of the j-th
example = order[j mod n], order a permutation of the n templates drawn from (seed, member)), as FLAN mixes its
ten templates per task. Evaluation: every template separately (template_eval=all: one split per template,
"<member>/<split>/flan<id>", and mean / median / best over them, peftrun/tasks/mixture.py) or round-robin like
training. Rendering is peftrun/prompting/templates.py's (data only, no code runs).

Options: FLAN renders a classification task's answer options inline ({options_}) and trains on the option word;
`member_prediction` maps a generated option back to the member's label name so the member's own metric scores
it (anything else stays as generated, and counts as invalid there).
"""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Any

from peftrun.prompting.templates import Template, example_fields, load_templates, render
from peftrun.tasks.base import Example
from peftrun.tasks.superglue import normalize_label

TEMPLATE_SOURCES = ("none", "flan")
TEMPLATE_EVAL = ("all", "round_robin")


def member_templates(source: str, member: str, data_dir: str | None) -> list[Template]:
    """The member's templates (one PeftrunError line when the source has none for it)."""
    return load_templates(source, member, data_dir or "")


def template_order(n: int, seed: int, member: str) -> list[int]:
    """The seeded round-robin order of a member's n templates."""
    return random.Random(f"{seed}/{member}").sample(range(n), n)


def render_example(member: str, ex: Example, template: Template) -> Example:
    """`ex` under `template`: the rendered prompt as source; the rendered target (an option word for tasks with
    options); references: the rendered target for tasks with options, else the example's own references."""
    fields = example_fields(member, ex)
    prompt, target = render(template, fields)
    options = fields.get("options")
    meta = dict(ex.meta or {})
    meta["template"] = f"{template.source}{template.id}"
    if options and member != "record":
        meta["options"] = [str(o) for o in options]
        references: tuple[str, ...] = (target,)
    else:
        references = ex.references
    return replace(ex, source=prompt, target=target, references=references, meta=meta)


def render_round_robin(member: str, examples: list[Example], templates: list[Template], seed: int) -> list[Example]:
    order = template_order(len(templates), seed, member)
    return [render_example(member, ex, templates[order[j % len(order)]]) for j, ex in enumerate(examples)]


def member_prediction(prediction: str, meta: dict[str, Any], label_names: tuple[str, ...]) -> str:
    """A generated option word -> the member's label name (module docstring); other text unchanged."""
    options = meta.get("options")
    if not options or len(options) != len(label_names):
        return prediction
    wanted = normalize_label(prediction)
    for option, name in zip(options, label_names, strict=True):
        if normalize_label(option) == wanted:
            return name
    return prediction
