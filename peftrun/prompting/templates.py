"""Prompt templates as data: FLAN 2021, promptsource and Super-NaturalInstructions files, and the plain source.

A `Template` holds an input and a target pattern and, for tasks with options, its answer choices. Templates are
rendered safely and deterministically:
- plain / flan / superni patterns use str.format-style `{field}` (and `{{` / `}}` for literal braces), filled by
  a regex substitution: no attribute access, no indexing, no format specs (str.format would allow
  `{x.__class__}`);
- promptsource patterns are Jinja (`prompt ||| target`), rendered only in `jinja2.sandbox.SandboxedEnvironment`;
  promptsource's random `choice` filter is replaced by a deterministic one (the first item).

`example_fields` maps a peftrun Example to the field names these files use (FLAN's `premise`, `options_` ...
and the HF dataset columns promptsource reads, `label` included), from the example's source and meta only.
Import-light (no torch, no transformers): prompt configs are checked before any model is loaded.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from peftrun.errors import PeftrunError

SOURCES = ("plain", "flan", "promptsource", "superni")

# peftrun task name -> FLAN 2021 task name (instructions/flan/templates.json)
FLAN_TASKS = {
    "rte": "rte", "cb": "cb", "copa": "copa", "wic": "wic", "wsc": "wsc", "boolq": "bool_q", "multirc": "multirc",
    "record": "record", "dart": "dart", "e2e": "e2e_nlg", "webnlg": "web_nlg_en", "xsum": "xsum",
    "cnn_dm": "cnn_dailymail",
}  # fmt: skip
# peftrun task name -> promptsource dataset (instructions/promptsource/templates.json)
PROMPTSOURCE_TASKS = {
    "rte": "super_glue/rte", "cb": "super_glue/cb", "copa": "super_glue/copa", "wic": "super_glue/wic",
    "wsc": "super_glue/wsc.fixed", "boolq": "super_glue/boolq", "multirc": "super_glue/multirc",
    "record": "super_glue/record", "e2e": "e2e_nlg_cleaned", "xsum": "xsum", "cnn_dm": "cnn_dailymail/3.0.0",
}  # fmt: skip
# FLAN 2021's answer options per label id (index = peftrun's label id); COPA / ReCoRD take theirs from the example
FLAN_OPTIONS = {
    "rte": ("yes", "no"), "cb": ("yes", "no", "it is not possible to tell"), "boolq": ("no", "yes"),
    "wic": ("no", "yes"), "wsc": ("no", "yes"), "multirc": ("no", "yes"),
}  # fmt: skip
PROMPTSOURCE_ONLY = "promptsource_fields"  # example_fields key: fields that mean something else in promptsource
PLAIN = "plain"  # the only plain template id: the task's own source and target


@dataclass(frozen=True)
class Template:
    """One prompt pattern.

    source: plain | flan | promptsource | superni; task: the peftrun task (superni: the Super-NI task file name);
    id: flan: the template's index ("0".."9"); promptsource: its name; superni: "definition" or
    "definition+pos"; plain: "plain".
    input / target: the patterns (promptsource: the Jinja before / after "|||", both rendered as one template).
    answer_choices: the option patterns (rendered with the example's fields), or None: the example's own options
    (fields["options"]) when it has some. promptsource: one Jinja string whose rendering is split on "|||".
    """

    source: str
    task: str
    id: str
    input: str
    target: str
    answer_choices: tuple[str, ...] | None = None


def load_templates(source: str, task: str, data_dir: str | Path) -> list[Template]:
    """Every template of `task` in `source`; `data_dir` is the shared data folder (holding instructions/).

    An unknown source, a task the source has no templates for or a missing file is one PeftrunError line.
    """
    if source not in SOURCES:
        raise PeftrunError(f"prompt.source={source!r}; known: {', '.join(SOURCES)}")
    if source == PLAIN:
        return [Template(PLAIN, task, PLAIN, "{source}", "{target}", None)]
    base = Path(data_dir).expanduser() / "instructions"
    if source == "flan":
        name = FLAN_TASKS.get(task, task)
        table = _read_json(base / "flan" / "templates.json")
        if name not in table:
            raise PeftrunError(f"FLAN has no templates for task {task!r}; FLAN covers peftrun tasks "
                               f"{', '.join(sorted(FLAN_TASKS))} (use prompt.source=plain or promptsource)")
        options = FLAN_OPTIONS.get(task)
        return [Template("flan", task, str(i), t["input"], t["target"], options) for i, t in enumerate(table[name])]
    if source == "promptsource":
        name = PROMPTSOURCE_TASKS.get(task, task)
        table = _read_json(base / "promptsource" / "templates.json")
        if name not in table:
            raise PeftrunError(f"promptsource has no templates for task {task!r}; it covers peftrun tasks "
                               f"{', '.join(sorted(PROMPTSOURCE_TASKS))}")
        out = []
        for t in table[name]:
            prompt, _, target = t["jinja"].partition("|||")
            choices = t.get("answer_choices")
            out.append(Template("promptsource", task, t["name"], prompt, target, (choices,) if choices else None))
        return out
    path = base / "superni" / "tasks" / f"{task}.json"
    if not path.is_file():
        raise PeftrunError(f"Super-NaturalInstructions has no task file {path}; prompt.source=superni takes a "
                           f"Super-NI task name (one of {base / 'superni' / 'tasks'}/*.json)")
    return _superni_templates(task, _read_json(path))


def find_template(templates: list[Template], template_id: str) -> Template:
    """The template with this id, or one PeftrunError line listing the known ids."""
    for template in templates:
        if template.id == template_id:
            return template
    known = ", ".join(repr(t.id) for t in templates)
    where = f"{templates[0].source} templates of {templates[0].task}" if templates else "templates"
    raise PeftrunError(f"prompt.template={template_id!r} is not one of the {where}: {known}")


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise PeftrunError(f"missing template file {path}; set paths.data_dir to the shared data folder "
                           "(it holds instructions/)")
    return _read_json_cached(str(path))


@lru_cache(maxsize=16)
def _read_json_cached(path: str) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _escape(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")


def _superni_templates(task: str, data: dict[str, Any]) -> list[Template]:
    """Super-NI's encoding (Wang et al. 2022, "Def + Pos(2)"): definition, positive examples, then the query."""
    definition = _escape(" ".join(str(d) for d in data.get("Definition", [])).strip())
    head = f"Definition: {definition}\n\n"
    query = "Now complete the following example -\nInput: {input}\nOutput:"
    positives = ""
    for i, ex in enumerate(data.get("Positive Examples", [])[:2], start=1):
        positives += f"Positive Example {i} -\nInput: {_escape(str(ex['input']))}\nOutput: {_escape(str(ex['output']))}\n\n"
    return [Template("superni", task, "definition", head + query, "{output}", None),
            Template("superni", task, "definition+pos", head + positives + query, "{output}", None)]


# -- rendering ---------------------------------------------------------------------------------------------------
_FIELD = re.compile(r"\{\{|\}\}|\{(\w*)\}")


def format_safe(pattern: str, fields: dict[str, Any], where: str = "template") -> str:
    """`pattern` with each `{name}` replaced by str(fields[name]); `{{` / `}}` are literal braces. Nothing else
    is interpreted. A field the example lacks is one PeftrunError line."""

    def replace(match: re.Match[str]) -> str:
        token = match.group(0)
        if token == "{{":
            return "{"
        if token == "}}":
            return "}"
        name = match.group(1)
        if name not in fields:
            raise PeftrunError(f"{where} needs field {{{name}}}, which this task's examples do not have "
                               f"(they have {', '.join(sorted(fields))}); choose another template")
        return str(fields[name])

    return _FIELD.sub(replace, pattern)


@lru_cache(maxsize=1)
def _jinja_env() -> Any:
    from jinja2.sandbox import SandboxedEnvironment

    env = SandboxedEnvironment(autoescape=False, keep_trailing_newline=False)
    env.filters["choice"] = lambda items: list(items)[0] if items else ""  # promptsource: random.choice
    return env


@lru_cache(maxsize=512)
def _jinja(text: str) -> Any:
    return _jinja_env().from_string(text)


def _jinja_render(text: str, context: dict[str, Any], where: str) -> str:
    from jinja2 import TemplateError

    try:
        return _jinja(text).render(**context)
    except TemplateError as err:
        raise PeftrunError(f"{where}: {type(err).__name__}: {err}") from None


def render_choices(template: Template, fields: dict[str, Any]) -> list[str] | None:
    """The example's answer options under this template (rank classification scores these), or None."""
    where = f"{template.source} template {template.id!r} of {template.task}"
    if template.answer_choices is None:
        options = fields.get("options")
        return list(options) if options else None
    if template.source == "promptsource":
        context = {**fields, **fields.get(PROMPTSOURCE_ONLY, {})}
        rendered = _jinja_render(template.answer_choices[0], context, where)
        return [c.strip() for c in rendered.split("|||")]
    return [format_safe(c, fields, where) for c in template.answer_choices]


def render(template: Template, fields: dict[str, Any]) -> tuple[str, str]:
    """(prompt, target) of one example under `template`. Deterministic; no code from the template runs."""
    where = f"{template.source} template {template.id!r} of {template.task}"
    if template.source != "promptsource":
        return format_safe(template.input, fields, where), format_safe(template.target, fields, where)
    context = {**fields, **fields.get(PROMPTSOURCE_ONLY, {})}
    choices = render_choices(template, fields)
    if choices is not None:
        context["answer_choices"] = choices
    text = _jinja_render(template.input + "|||" + template.target, context, where)
    prompt, _, target = text.partition("|||")
    return prompt.strip(), target.strip()


# -- example fields ----------------------------------------------------------------------------------------------
def options_block(options: list[str] | tuple[str, ...]) -> str:
    """FLAN 2021's inline options: "OPTIONS:" then one "- option" line each."""
    return "OPTIONS:\n" + "\n".join(f"- {o}" for o in options)


def example_fields(task_name: str, example: Any) -> dict[str, Any]:
    """The fields templates read, for one peftrun Example of `task_name`.

    Always: source, target, input (= source), output (= target). Tasks with options add label (int; -1 when
    unknown), options (FLAN's option words, COPA's choices, ReCoRD's entities), options_ / options_str (FLAN's
    inline block) and answer (the gold option, or the target). Values are strings except label (int) and the
    list fields promptsource's Jinja indexes (options, entities, answers).
    """
    meta = example.meta or {}
    fields: dict[str, Any] = {"source": example.source, "target": example.target, "input": example.source,
                              "output": example.target, "answer": example.target}
    extra = _TASK_FIELDS.get(task_name)
    if extra is not None:
        fields.update(extra(example, meta))
    options = fields.get("options")
    if options is None and task_name in FLAN_OPTIONS:
        options = list(FLAN_OPTIONS[task_name])
        fields["options"] = options
    if options:
        label = int(meta.get("label", -1))
        fields["label"] = label
        fields["options_"] = fields["options_str"] = options_block(options)
        fields["answer"] = options[label] if 0 <= label < len(options) else example.target
    return fields


def _pair(premise_key: str, hypothesis_key: str):
    def fields(ex: Any, meta: dict[str, Any]) -> dict[str, Any]:
        return {premise_key: meta["text_a"], hypothesis_key: meta["text_b"]}

    return fields


def _boolq(ex: Any, meta: dict[str, Any]) -> dict[str, Any]:
    passage = meta["text_b"]
    title, sep, text = passage.partition(" -- ")
    return {"question": meta["text_a"], "passage": passage, "title": title if sep else "", "text": text if sep else passage}


_COPA = re.compile(r"^(.*) What was the (cause|effect)\?$", re.S)


def _copa(ex: Any, meta: dict[str, Any]) -> dict[str, Any]:
    match = _COPA.match(meta["text_a"])
    premise, question = (match.group(1), match.group(2)) if match else (meta["text_a"], "")
    choices = list(meta["candidates"])
    return {"premise": premise, "question": question, "choice1": choices[0], "choice2": choices[1], "options": choices}


def _wic(ex: Any, meta: dict[str, Any]) -> dict[str, Any]:
    word, _, first = meta["text_a"].partition(" : ")
    return {"word": word, "sentence1": first, "sentence2": meta["text_b"]}


def _wsc(ex: Any, meta: dict[str, Any]) -> dict[str, Any]:
    marked = meta["text_a"]  # the pronoun (span2) wrapped in asterisks by the task
    span2, _, span1 = meta["text_b"].partition(" refers to ")
    words = marked.split()
    first = next((i for i, w in enumerate(words) if w.startswith("*")), -1)
    last = next((i for i in range(max(first, 0), len(words)) if words[i].endswith("*")), -1)
    if 0 <= first <= last:
        words[first], words[last] = words[first][1:], words[last][:-1]
    return {"text": " ".join(words), "context": " ".join(words), "span1_text": span1, "span2_text": span2,
            "span2_index": first, "text1": span1, "text2": span2}


_MULTIRC = re.compile(r"^multirc question: (.*) answer: (.*) paragraph: (.*)$", re.S)


def _multirc(ex: Any, meta: dict[str, Any]) -> dict[str, Any]:
    match = _MULTIRC.match(ex.source)
    question, answer = (match.group(1), match.group(2)) if match else (meta["text_b"], "")
    # FLAN's {answer} is the yes / no option; promptsource's {{answer}} is the HF column (the answer text)
    return {"paragraph": meta["text_a"], "question": question, "response": answer,
            PROMPTSOURCE_ONLY: {"answer": answer}}


_RECORD = re.compile(r"^record query: (.*?) entities: ", re.S)


def _record(ex: Any, meta: dict[str, Any]) -> dict[str, Any]:
    match = _RECORD.match(ex.source)
    entities = list(meta["entities"])
    return {"passage": meta["text_a"], "query": match.group(1) if match else "", "entities": entities,
            "answers": list(meta.get("answers", [])), "options": entities}


def _text_task(source_keys: tuple[str, ...], target_keys: tuple[str, ...]):
    def fields(ex: Any, meta: dict[str, Any]) -> dict[str, Any]:
        out = {key: ex.source for key in source_keys}
        out.update({key: ex.target for key in target_keys})
        return out

    return fields


def _dart(ex: Any, meta: dict[str, Any]) -> dict[str, Any]:
    triples = meta.get("triples") or []
    lines = [", ".join(str(x) for x in t) for t in triples]
    return {"tripleset": "; ".join(lines) if lines else ex.source, "tripleset_newline": "\n".join(lines) or ex.source}


_TASK_FIELDS = {
    "rte": _pair("premise", "hypothesis"),
    "cb": _pair("premise", "hypothesis"),
    "boolq": _boolq,
    "copa": _copa,
    "wic": _wic,
    "wsc": _wsc,
    "multirc": _multirc,
    "record": _record,
    "e2e": _text_task(("meaning_representation",), ("human_reference",)),
    "dart": _dart,
    "webnlg": _text_task(("input_string",), ()),
    "xsum": _text_task(("text", "document"), ("summary",)),
    "cnn_dm": _text_task(("text", "article"), ("highlights",)),
}
