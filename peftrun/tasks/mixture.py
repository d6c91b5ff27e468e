"""task=mixture: several peftrun tasks trained together and evaluated task by task (multi-task training,
instruction tuning's held-out evaluation, multi-task P-tuning v2).

Members: task.mixture.train / task.mixture.eval name tasks; each is built from its own conf/task/<name>.yaml,
then task.mixture.tasks.<name> overrides (e.g. data_dir); task.data_dir=builtin gives every member its built-in
sample. The mixture's own max_source_length / max_target_length / generation apply to all members (one model,
one tokenisation).

Training examples: each training member's train split, its first task.mixture.max_per_task examples (FLAN caps
every task at 3,000), concatenated; `groups` says which member each came from, and the mixing rates
(peftrun/instruction/mixing.py) decide how often. Evaluation: one split per (eval member, its eval split), named
"<member>/<split>", scored by that member's own metrics, so the record holds per-task metrics; zero-shot, or
k-shot with task.mixture.eval_shots=k (the member's own training examples under the query's template).

Head formulation (encoders): members that all classify get one head per task, as the columns of one classifier:
member i owns label columns [offset_i, offset_i + C_i) and meta["label"] is the global column (offset + label),
peftrun/instruction/multitask_head.py restricts the softmax and the argmax to the example's own columns.

Leakage: before anything loads, a training member sharing a source dataset or a FLAN (neighbour) cluster with
an evaluation member is refused (peftrun/instruction/flan.py); task.mixture.check_leakage=source checks sources
only (Super-NI), =off nothing (multi-task training evaluated on its own tasks).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from peftrun.errors import PeftrunError
from peftrun.tasks.base import BUILTIN, TASKS, Example, Task, register_task

SEPARATOR = "/"  # eval split names: "<member>/<member split>"


def member_config(name: str, mixture_cfg: Any) -> Any:
    """The TaskConfig of member `name`: conf/task/<name>.yaml, then the mixture's overrides for it."""
    from peftrun.config import CONF_DIR, TaskConfig
    from peftrun.tasks.superni import PREFIX

    path = Path(CONF_DIR) / "task" / f"{'superni' if name.startswith(PREFIX) else name}.yaml"
    known = sorted(p.stem for p in path.parent.glob("*.yaml") if p.stem not in ("mixture", "superni"))
    known.append(f"{PREFIX}<Super-NI task> / {PREFIX}train / {PREFIX}test")
    if name == "mixture" or not path.is_file():
        raise PeftrunError(f"task.mixture: unknown member task {name!r}; known: {', '.join(known)}")
    cfg = OmegaConf.merge(OmegaConf.structured(TaskConfig), OmegaConf.load(path))
    if mixture_cfg.data_dir == BUILTIN:
        cfg.data_dir = BUILTIN
    overrides = mixture_cfg.mixture.tasks.get(name)
    if overrides is not None:  # resolved in the run's config (e.g. ${paths.data_dir}) before leaving it
        cfg = OmegaConf.merge(cfg, OmegaConf.to_container(overrides, resolve=True))
    return cfg


@register_task("mixture")
class MixtureTask(Task):
    """See the module docstring."""

    def __init__(self, cfg: Any, data_dir: str | None = None) -> None:
        super().__init__(cfg, data_dir)
        import peftrun.tasks  # noqa: F401  (registers the members)

        mix = cfg.mixture
        if not mix.train and not mix.eval:
            raise PeftrunError("task=mixture needs members: task.mixture.train=[rte,cb,...] and/or "
                               "task.mixture.eval=[...]")
        for key in ("train", "eval"):
            names = list(mix[key])
            if len(set(names)) != len(names):
                raise PeftrunError(f"task.mixture.{key}={names} names a task twice")
        if cfg.max_train_examples is not None:
            raise PeftrunError("task=mixture caps each member instead of the concatenation: set "
                               "task.mixture.max_per_task, not task.max_train_examples")
        if mix.max_per_task is not None and mix.max_per_task < 1:
            raise PeftrunError(f"task.mixture.max_per_task={mix.max_per_task}; give a positive cap or null")
        from peftrun.tasks.superni import PREFIX, SuperNITask, expand_members

        self.train_names = expand_members(list(mix.train), data_dir)
        self.eval_names = expand_members(list(mix.eval), data_dir)
        self.members: dict[str, Task] = {}
        for name in dict.fromkeys(self.train_names + self.eval_names):
            member_cfg = member_config(name, cfg)
            if name.startswith(PREFIX):
                self.members[name] = SuperNITask(member_cfg, data_dir, name[len(PREFIX):])
            else:
                self.members[name] = TASKS[member_cfg.name](member_cfg, data_dir)
        from peftrun.instruction.flan import check_leakage

        check_leakage(self.train_names, self.eval_names, data_dir, self.sources(), mix.check_leakage)
        self._set_templates(data_dir)
        self._set_head()
        self._pools = self._demonstration_pools()
        self.groups: list[int] = []  # member index (in train_names) of each training example of the last load

    def sources(self) -> dict[str, str]:
        """Source datasets of members that name one themselves (Super-NI tasks), for the leakage check."""
        return {n: t.source_dataset for n, t in self.members.items() if hasattr(t, "source_dataset")}

    # -- instruction templates (peftrun/instruction/render.py) ---------------------------------------------------
    def _set_templates(self, data_dir: str | None) -> None:
        from peftrun.instruction.render import TEMPLATE_EVAL, TEMPLATE_SOURCES, member_templates

        mix = self.cfg.mixture
        if mix.templates not in TEMPLATE_SOURCES or mix.template_eval not in TEMPLATE_EVAL:
            raise PeftrunError(f"task.mixture.templates={mix.templates!r} / template_eval={mix.template_eval!r}; "
                               f"known: {', '.join(TEMPLATE_SOURCES)} / {', '.join(TEMPLATE_EVAL)}")
        self.templates = {}
        if mix.templates != "none":
            self.templates = {name: member_templates(mix.templates, name, data_dir) for name in self.members}

    def _render(self, name: str, examples: list[Example], template_id: str | None = None) -> list[Example]:
        """Members' examples through their templates: one template (template_id) or round-robin."""
        from peftrun.instruction.render import render_example, render_round_robin

        if not self.templates:
            return examples
        templates = self.templates[name]
        if template_id is None:
            return render_round_robin(name, examples, templates, self.cfg.mixture.seed)
        template = next(t for t in templates if f"{t.source}{t.id}" == template_id)
        return [render_example(name, ex, template) for ex in examples]

    def metric_summary(self, metrics: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
        """Per evaluated member and split, over its templates: <metric>_mean / _median / _best (best = max; min for
        invalid and ter, where lower is better)."""
        import statistics

        per_split: dict[str, list[dict[str, float]]] = {}
        for split, scores in metrics.items():
            if split.count(SEPARATOR) == 2:
                per_split.setdefault(split.rsplit(SEPARATOR, 1)[0], []).append(scores)
        summary = {}
        for split, runs in per_split.items():
            out = {}
            for key in runs[0]:
                values = [r[key] for r in runs if key in r]
                best = min if key in ("invalid", "ter") else max
                out |= {f"{key}_mean": statistics.fmean(values), f"{key}_median": statistics.median(values),
                        f"{key}_best": best(values)}
            summary[split] = out
        return summary

    # -- head: one block of label columns per member; or rank classification over each example's options -------
    def _set_head(self) -> None:
        """head "classification" (one column block per member) when every member classifies and no template
        rewrites them; with task.formulation=rank, "candidates": every evaluated example carries its options as
        meta["entities"], which peftrun/formulations/rank.py scores (the option text is the prediction)."""
        heads = {t.head for t in self.members.values()}
        self.multitask_head = heads == {"classification"} and not self.templates
        self.offsets: dict[str, int] = {}
        names: list[str] = []
        if self.multitask_head:
            for name, member in self.members.items():
                self.offsets[name] = len(names)
                names += list(member.label_names)
        self.label_names = tuple(names)
        self.head = "classification" if self.multitask_head else None
        if self.cfg.formulation == "rank":
            plain = [n for n in self.eval_names if self.members[n].head not in ("classification", "candidates")]
            if plain:
                raise PeftrunError(f"task.formulation=rank needs evaluation members with answer options; "
                                   f"{', '.join(plain)} has none (evaluate it with task.formulation=text)")
            self.head = "candidates"

    def _options(self, name: str, ex: Example) -> list[str]:
        """An evaluated example's answer options for rank classification: the template's, ReCoRD's entities,
        COPA's choices, else the member's verbalizers."""
        meta = ex.meta or {}
        member = self.members[name]
        return list(meta.get("options") or meta.get("entities") or meta.get("candidates")
                    or getattr(member, "verbalizers", None) or member.label_names)

    def label_columns(self, name: str) -> range:
        """The classifier columns of member `name` (head formulation)."""
        return range(self.offsets[name], self.offsets[name] + len(self.members[name].label_names))

    # -- splits -----------------------------------------------------------------------------------------------
    def evaluation_splits(self) -> list[str]:
        """"<member>/<split>", or with every template evaluated "<member>/<split>/<source><template id>"."""
        splits = []
        for name in self.eval_names:
            for split in self.members[name].cfg.eval_splits:
                if self.templates and self.cfg.mixture.template_eval == "all":
                    splits += [f"{name}{SEPARATOR}{split}{SEPARATOR}{t.source}{t.id}" for t in self.templates[name]]
                else:
                    splits.append(f"{name}{SEPARATOR}{split}")
        return splits

    def member_of(self, split: str) -> tuple[str, str]:
        name, member_split, _ = self._parse(split)
        return name, member_split

    def _parse(self, split: str) -> tuple[str, str, str | None]:
        name, _, rest = split.partition(SEPARATOR)
        member_split, _, template = rest.partition(SEPARATOR)
        if name not in self.members or not member_split:
            raise PeftrunError(f"mixture split {split!r} is not <member>{SEPARATOR}<split> of a member "
                               f"({', '.join(self.members)})")
        return name, member_split, template or None

    def load(self, split: str, grouped: bool) -> list[Example]:
        if split == self.cfg.train_split and not grouped:
            return self.load_train()
        name, member_split, template = self._parse(split)
        examples = self._render(name, self.members[name].load(member_split, grouped), template)
        if self.cfg.mixture.eval_shots:
            examples = self._with_demonstrations(name, examples)
        if self.head == "candidates":  # rank classification: options as entities (see _set_head)
            examples = [replace(ex, meta={**(ex.meta or {}), "entities": self._options(name, ex)}) for ex in examples]
        return [self._tag(name, ex) for ex in examples]

    def _demonstration_pools(self) -> dict[str, list[Example]]:
        """eval_shots > 0: each evaluated member's training examples (checked here, before any model loads)."""
        k = self.cfg.mixture.eval_shots
        if k < 0:
            raise PeftrunError(f"task.mixture.eval_shots={k}; give 0 (zero-shot) or a positive k")
        pools = {}
        for name in self.eval_names if k else []:
            member = self.members[name]
            pools[name] = member.load(member.cfg.train_split, grouped=False)
            if len(pools[name]) < k:
                raise PeftrunError(f"task.mixture.eval_shots={k}: {name} has {len(pools[name])} training examples "
                                   "to draw demonstrations from; lower task.mixture.eval_shots")
        return pools

    def _with_demonstrations(self, name: str, examples: list[Example]) -> list[Example]:
        """k-shot held-out evaluation (FLAN's few-shot setting): before each query, k training examples of the same
        member under the query's own template, each "prompt answer", a blank line between; drawn per query from
        (seed, member, query id), so every template and every run of a seed shows the same demonstrations."""
        import random

        from peftrun.instruction.render import render_example
        from peftrun.prompting.layout import NATURAL_STOP

        pool, k = self._pools[name], self.cfg.mixture.eval_shots
        by_template = {f"{t.source}{t.id}": t for t in self.templates.get(name, [])}
        out = []
        for ex in examples:
            picked = random.Random(f"{self.cfg.mixture.seed}/{name}/{ex.id}").sample(pool, k)
            template = by_template.get((ex.meta or {}).get("template", ""))
            if template is not None:
                picked = [render_example(name, d, template) for d in picked]
            shown = [f"{d.source} {d.target}" for d in picked]
            meta = {**(ex.meta or {}), "demonstrations": [d.id for d in picked]}
            out.append(replace(ex, source=NATURAL_STOP.join([*shown, ex.source]), meta=meta))
        return out

    def load_train(self) -> list[Example]:
        """Every training member's capped training examples; sets self.groups and self.sizes."""
        cap = self.cfg.mixture.max_per_task
        examples: list[Example] = []
        self.groups, self.sizes = [], {}
        for index, name in enumerate(self.train_names):
            member = self.members[name]
            rows = member.load(member.cfg.train_split, grouped=False)
            rows = rows if cap is None else rows[:cap]
            self.sizes[name] = len(rows)
            examples += [self._tag(name, ex) for ex in self._render(name, rows)]
            self.groups += [index] * len(rows)
        return examples

    def _tag(self, name: str, ex: Example) -> Example:
        meta = dict(ex.meta or {})
        meta["task"] = name
        if self.multitask_head and "label" in meta:
            meta["member_label"] = meta["label"]
            meta["label"] = self.offsets[name] + int(meta["label"])
        return replace(ex, id=f"{name}{SEPARATOR}{ex.id}", meta=meta)

    def _untag(self, ex: Example) -> Example:
        meta = dict(ex.meta or {})
        name = meta.pop("task")
        if "member_label" in meta:
            meta["label"] = meta.pop("member_label")
        return replace(ex, id=ex.id[len(name) + len(SEPARATOR):], meta=meta)

    # -- scoring: each member's own metrics -------------------------------------------------------------------
    def score(self, predictions: list[str], examples: list[Example]) -> dict[str, float]:
        names = {(e.meta or {}).get("task") for e in examples}
        if len(names) != 1 or None in names:
            raise PeftrunError(f"mixture: score one member's examples at a time (got tasks {sorted(map(str, names))})")
        name = names.pop()
        member = self.members[name]
        if self.templates:
            from peftrun.instruction.render import member_prediction

            predictions = [member_prediction(p, e.meta or {}, member.label_names)
                           for p, e in zip(predictions, examples, strict=True)]
        return member.score(predictions, [self._untag(e) for e in examples])
