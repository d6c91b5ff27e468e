"""SuperGLUE (Wang et al. 2019), all eight tasks: boolq, cb, copa, rte, wic, wsc, multirc, record.

Data, per task (first that applies):
- task.data_dir=DIR: the official jsonl files, in DIR or in DIR/<Folder> (BoolQ, CB, COPA, RTE, WiC, WSC,
  MultiRC, ReCoRD): train.jsonl -> train, val.jsonl -> validation, dev32.jsonl -> dev32 (FewGLUE's 32-example
  dev set). Test labels are hidden, so the papers report validation, and so does this task (eval_splits);
- task.data_dir=builtin: a few rows per task, built in, the same for every split (tests, offline smoke runs);
- task.data_dir=null: the hub (task.hub_id, "ID:CONFIG", e.g. aps/super_glue:rte), rows converted to the
  official schema.
Rows that lack a field or carry an unknown label are skipped and counted in one warning per file.

Two formulations (Task.formulation picks by backbone; task.formulation overrides):
- text-to-text (GPT-2, BART, T5): T5-style sources ("rte premise: ... hypothesis: ...", long passages last so
  truncation cuts them), target = task.verbalizers[label] (default: the label names). A generated text maps to a
  label when, lower-cased and stripped of surrounding whitespace and punctuation, it equals a verbalizer or a label
  name (COPA: also the chosen alternative's text); anything else maps to no label and is scored wrong. ReCoRD's
  target is the answer entity itself.
- head (encoders): meta["label"] (index into label_names) and the text pair meta["text_a"] / meta["text_b"];
  COPA and ReCoRD are candidate scoring: meta["candidates"] (COPA: the two alternatives; ReCoRD: the query with
  each passage entity in the placeholder) and meta["label"] = the correct candidate. A head's prediction is passed
  to `score` as its label name (ReCoRD: the chosen entity's text).

Grouping: an example is one row (MultiRC: one answer option, with meta["question"] naming its question, for EM).
ReCoRD with grouped=False gives one example per gold answer (the T5 recipe); grouped=True one per query with all
gold answers as references.

Metrics (0-100, SuperGLUE's): accuracy; CB accuracy and macro-F1; MultiRC F1a and EM; ReCoRD token F1 and EM,
max over gold answers (peftrun.metrics.classification). `invalid` is the percentage of predictions that named no
label.
"""

from __future__ import annotations

import re
from abc import abstractmethod
from pathlib import Path
from typing import Any, ClassVar

from peftrun.errors import PeftrunError
from peftrun.tasks.base import BUILTIN, Example, Task, register_task
from peftrun.tasks.loading import (
    DataFileError,
    cached_parse,
    hub_split,
    load_hub,
    read_json_lines,
    require_dir,
    warn_skipped,
)

FILES = {"train": "train.jsonl", "validation": "val.jsonl", "dev32": "dev32.jsonl"}
_STRIP = " \t\n\"'`.,;:!?()[]"


def normalize_label(text: str) -> str:
    """How a generated label is compared: lower case, single spaces, no surrounding punctuation."""
    return " ".join(str(text).lower().split()).strip(_STRIP)


def read_jsonl(path: Path, task: str = "superglue") -> tuple[list[dict[str, Any]], int]:
    """(objects, number of lines that are not JSON objects) of a jsonl file; blank lines are ignored. A file that
    is not UTF-8, is empty, or has no JSON object at all is a DataFileError."""
    values, bad = read_json_lines(path, task)
    rows = [v for v in values if isinstance(v, dict)]
    if not rows:
        raise DataFileError(task, path, f"has no JSON object lines ({bad + len(values)} lines, none an object)",
                            fix="give one JSON object per line, as the official SuperGLUE files")
    return rows, bad + len(values) - len(rows)


def _bool_label(value: Any) -> int:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int) and value in (0, 1):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return int(value.lower() == "true")
    raise ValueError(f"not a boolean label: {value!r}")


def _text(row: dict[str, Any], key: str) -> str:
    value = row[key]
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"field {key!r} is empty or not text")
    return value.strip()


class SuperGlueTask(Task):
    """Base of the eight tasks. Subclasses set the class constants and `examples_of(row)`."""

    folder: ClassVar[str] = ""
    options: ClassVar[tuple[str, ...]] = ("hub_id", "verbalizers")
    head: ClassVar[str | None] = "classification"
    label_names: ClassVar[tuple[str, ...]] = ("False", "True")
    splits: ClassVar[tuple[str, ...]] = ("train", "validation", "dev32")
    builtin: ClassVar[tuple[dict[str, Any], ...]] = ()

    def __init__(self, cfg: Any, data_dir: str | None = None) -> None:
        super().__init__(cfg, data_dir)
        self.verbalizers = self._verbalizers()
        self._lookup = self._label_lookup()

    # -- labels --------------------------------------------------------------------------------------------
    def _verbalizers(self) -> tuple[str, ...]:
        given = self.cfg.verbalizers
        if given is None or not self.label_names:
            return self.label_names
        words = tuple(str(v) for v in given)
        if len(words) != len(self.label_names):
            raise PeftrunError(f"{self.name}: task.verbalizers has {len(words)} entries, the task has "
                               f"{len(self.label_names)} labels ({', '.join(self.label_names)}); give one per label")
        return words

    def _label_lookup(self) -> dict[str, int]:
        """normalised verbalizer or label name -> label id; a word naming two labels is refused."""
        lookup: dict[str, int] = {}
        for names in (self.verbalizers, self.label_names):
            for i, word in enumerate(names):
                key = normalize_label(word)
                if not key or lookup.get(key, i) != i:
                    raise PeftrunError(f"{self.name}: verbalizer {word!r} is empty or names two labels "
                                       f"(verbalizers {list(self.verbalizers)}, labels {list(self.label_names)}); "
                                       "set distinct task.verbalizers")
                lookup[key] = i
        return lookup

    def label_of(self, prediction: str, example: Example) -> int:
        """The label id a prediction names, or -1."""
        return self._lookup.get(normalize_label(prediction), -1)

    def label_index(self, value: Any) -> int:
        """A row's gold label -> its id (label names, booleans or ints)."""
        if self.label_names == ("False", "True"):
            return _bool_label(value)
        if isinstance(value, str) and value in self.label_names:
            return self.label_names.index(value)
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(self.label_names):
            return value
        raise ValueError(f"unknown label {value!r}")

    def classified(self, key: str, source: str, label: int, meta: dict[str, Any]) -> Example:
        target = self.verbalizers[label]
        return Example(key, source, target, (target,), {"label": label, **meta})

    # -- loading -------------------------------------------------------------------------------------------
    @abstractmethod
    def examples_of(self, row: dict[str, Any], key: str, grouped: bool) -> list[Example]:
        """The examples of one official row; KeyError / TypeError / ValueError when it is malformed."""

    def load(self, split: str, grouped: bool) -> list[Example]:
        if split == "test":
            raise PeftrunError(f"{self.name}: SuperGLUE's test labels are hidden; evaluate on validation as the "
                               "papers do (task.eval_splits=[validation])")
        if split not in self.splits:
            raise PeftrunError(f"{self.name}: unknown split {split!r}; known: {', '.join(self.splits)}")
        rows, bad, where = self.rows(split)
        examples: list[Example] = []
        skipped = bad
        for i, row in enumerate(rows):
            try:
                examples += self.examples_of(row, f"{split}-{row.get('idx', i)}", grouped)
            except (KeyError, TypeError, ValueError, IndexError, AttributeError):
                skipped += 1
        warn_skipped(skipped, len(rows) + bad, where, "missing field or unknown label")
        return self.cap(examples, split)

    def rows(self, split: str) -> tuple[list[dict[str, Any]], int, str]:
        """(official rows, unreadable lines, where) of a split."""
        if self.cfg.data_dir == BUILTIN:
            return [dict(r) for r in self.builtin], 0, f"built-in {self.name} sample"
        if self.cfg.data_dir:
            base = require_dir(self.cfg.data_dir, self.name)
            folder = base / self.folder if (base / self.folder).is_dir() else base
            path = folder / FILES[split]
            if not path.is_file():
                raise PeftrunError(f"{self.name}: missing file {path}; set task.data_dir to the folder holding the "
                                   f"official {self.folder} {', '.join(FILES.values())} (or its parent)")
            rows, bad = cached_parse(self.name, split, [path], lambda: read_jsonl(path, self.name))  # type: ignore[arg-type]
            return rows, bad, str(path)
        hint = ""
        if self.data_dir and (Path(self.data_dir) / "superglue" / "fewglue" / self.folder).is_dir():
            hint = f", e.g. task.data_dir={Path(self.data_dir) / 'superglue' / 'fewglue' / self.folder}"
        dataset = load_hub(self.name, self.cfg.hub_id, hint)
        hub_rows = [dict(r) for r in hub_split(dataset, split, self.name, str(self.cfg.hub_id))]
        return self.from_hub(hub_rows), 0, f"hub {self.cfg.hub_id} {split}"

    def from_hub(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Hub (HF super_glue) rows -> official rows; the sentence tasks differ only in integer labels."""
        return rows

    # -- scoring -------------------------------------------------------------------------------------------
    def _aligned(self, predictions: list[str], examples: list[Example]) -> tuple[list[int], list[int]]:
        if len(predictions) != len(examples):
            raise PeftrunError(f"{self.name}: {len(predictions)} predictions for {len(examples)} examples")
        golds = [int((e.meta or {})["label"]) for e in examples]
        return [self.label_of(p, e) for p, e in zip(predictions, examples, strict=True)], golds

    def score(self, predictions: list[str], examples: list[Example]) -> dict[str, float]:
        from peftrun.metrics.classification import accuracy

        preds, golds = self._aligned(predictions, examples)
        return self.select_metrics({"accuracy": accuracy(preds, golds), "invalid": _invalid(preds)})


def _invalid(preds: list[int]) -> float:
    return 100.0 * sum(p == -1 for p in preds) / len(preds)


def _hub_bool(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**r, "label": bool(r["label"])} if isinstance(r.get("label"), int) and r["label"] >= 0 else r for r in rows]


@register_task("boolq")
class BoolQ(SuperGlueTask):
    folder = "BoolQ"
    builtin = (
        {"idx": 0, "question": "is the sun a star", "passage": "Sun -- The Sun is the star at the center of the "
         "Solar System.", "label": True},
        {"idx": 1, "question": "is a whale a fish", "passage": "Whale -- Whales are marine mammals; they breathe air "
         "and are not fish.", "label": False},
        {"idx": 2, "question": "does water boil at 100 degrees celsius at sea level", "passage": "Boiling point -- At "
         "sea level water boils at 100 degrees Celsius.", "label": True},
        {"idx": 3, "question": "is paris the capital of italy", "passage": "Paris -- Paris is the capital of France; "
         "Rome is the capital of Italy.", "label": False},
    )  # fmt: skip

    def examples_of(self, row: dict[str, Any], key: str, grouped: bool) -> list[Example]:
        question, passage = _text(row, "question"), _text(row, "passage")
        return [self.classified(key, f"boolq question: {question} passage: {passage}", self.label_index(row["label"]),
                                {"text_a": question, "text_b": passage})]

    def from_hub(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return _hub_bool(rows)


class _PairTask(SuperGlueTask):
    """Premise / hypothesis tasks (CB, RTE) with string labels."""

    def examples_of(self, row: dict[str, Any], key: str, grouped: bool) -> list[Example]:
        premise, hypothesis = _text(row, "premise"), _text(row, "hypothesis")
        return [self.classified(key, f"{self.name} premise: {premise} hypothesis: {hypothesis}",
                                self.label_index(row["label"]), {"text_a": premise, "text_b": hypothesis})]


@register_task("cb")
class CB(_PairTask):
    folder = "CB"
    label_names = ("entailment", "contradiction", "neutral")
    builtin = (
        {"idx": 0, "premise": "It was raining all day, so the match was called off.", "hypothesis": "The match was "
         "called off", "label": "entailment"},
        {"idx": 1, "premise": "She said she had never been to Spain.", "hypothesis": "She has been to Spain",
         "label": "contradiction"},
        {"idx": 2, "premise": "He wondered whether the shop was still open.", "hypothesis": "The shop was open",
         "label": "neutral"},
        {"idx": 3, "premise": "The children finished all the cake.", "hypothesis": "There was cake",
         "label": "entailment"},
    )  # fmt: skip

    def score(self, predictions: list[str], examples: list[Example]) -> dict[str, float]:
        from peftrun.metrics.classification import accuracy, macro_f1

        preds, golds = self._aligned(predictions, examples)
        scores = {"accuracy": accuracy(preds, golds), "macro_f1": macro_f1(preds, golds), "invalid": _invalid(preds)}
        return self.select_metrics(scores)


@register_task("rte")
class RTE(_PairTask):
    folder = "RTE"
    label_names = ("entailment", "not_entailment")
    builtin = (
        {"idx": 0, "premise": "The cat sat on the mat in the kitchen.", "hypothesis": "A cat is in the kitchen.",
         "label": "entailment"},
        {"idx": 1, "premise": "The museum closes at five on weekdays.", "hypothesis": "The museum never closes.",
         "label": "not_entailment"},
        {"idx": 2, "premise": "Maria bought three apples and two pears.", "hypothesis": "Maria bought fruit.",
         "label": "entailment"},
        {"idx": 3, "premise": "The train to Leeds was delayed by an hour.", "hypothesis": "The train arrived early.",
         "label": "not_entailment"},
    )  # fmt: skip


@register_task("copa")
class COPA(SuperGlueTask):
    """Choice of plausible alternatives; the head scores the two alternatives as candidates."""

    folder = "COPA"
    head = "candidates"
    label_names = ("choice1", "choice2")
    builtin = (
        {"idx": 0, "premise": "The man turned on the faucet.", "choice1": "The toilet filled with water.",
         "choice2": "Water flowed from the spout.", "question": "effect", "label": 1},
        {"idx": 1, "premise": "My body cast a shadow over the grass.", "choice1": "The sun was rising.",
         "choice2": "The grass was cut.", "question": "cause", "label": 0},
        {"idx": 2, "premise": "The woman retired.", "choice1": "She received her pension.",
         "choice2": "She paid off her mortgage.", "question": "effect", "label": 0},
        {"idx": 3, "premise": "The girl found a bug in her cereal.", "choice1": "She poured milk in the bowl.",
         "choice2": "She lost her appetite.", "question": "effect", "label": 1},
    )  # fmt: skip

    def examples_of(self, row: dict[str, Any], key: str, grouped: bool) -> list[Example]:
        premise, question = _text(row, "premise"), _text(row, "question")
        choices = [_text(row, "choice1"), _text(row, "choice2")]
        if question not in ("cause", "effect"):
            raise ValueError(f"COPA question {question!r}")
        source = f"copa choice1: {choices[0]} choice2: {choices[1]} premise: {premise} question: {question}"
        meta = {"text_a": f"{premise} What was the {question}?", "candidates": choices}
        return [self.classified(key, source, self.label_index(row["label"]), meta)]

    def label_of(self, prediction: str, example: Example) -> int:
        found = super().label_of(prediction, example)
        if found < 0:
            choices = [normalize_label(c) for c in (example.meta or {}).get("candidates", [])]
            found = choices.index(normalize_label(prediction)) if normalize_label(prediction) in choices else -1
        return found


@register_task("wic")
class WiC(SuperGlueTask):
    folder = "WiC"
    builtin = (
        {"idx": 0, "word": "bank", "sentence1": "He sat on the bank of the river.", "sentence2": "She deposited the "
         "money at the bank.", "label": False},
        {"idx": 1, "word": "run", "sentence1": "I run every morning.", "sentence2": "They run to the station.",
         "label": True},
        {"idx": 2, "word": "light", "sentence1": "Turn on the light.", "sentence2": "The bag is very light.",
         "label": False},
        {"idx": 3, "word": "class", "sentence1": "The class starts at nine.", "sentence2": "Our class has thirty "
         "students.", "label": True},
    )  # fmt: skip

    def examples_of(self, row: dict[str, Any], key: str, grouped: bool) -> list[Example]:
        word, first, second = _text(row, "word"), _text(row, "sentence1"), _text(row, "sentence2")
        source = f"wic sentence1: {first} sentence2: {second} word: {word}"
        return [self.classified(key, source, self.label_index(row["label"]),
                                {"text_a": f"{word} : {first}", "text_b": second})]

    def from_hub(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return _hub_bool(rows)


@register_task("wsc")
class WSC(SuperGlueTask):
    """Winograd schema as binary classification: does the marked pronoun (span2) refer to span1?"""

    folder = "WSC"
    builtin = (
        {"idx": 0, "text": "Mark told Pete many lies about himself, which Pete included in his book. He should have "
         "been more skeptical.", "target": {"span1_index": 0, "span1_text": "Mark", "span2_index": 13,
                                            "span2_text": "He"}, "label": False},
        {"idx": 1, "text": "The trophy does not fit into the suitcase because it is too large.",
         "target": {"span1_index": 0, "span1_text": "The trophy", "span2_index": 9, "span2_text": "it"},
         "label": True},
        {"idx": 2, "text": "The trophy does not fit into the suitcase because it is too small.",
         "target": {"span1_index": 0, "span1_text": "The trophy", "span2_index": 9, "span2_text": "it"},
         "label": False},
        {"idx": 3, "text": "Joan thanked Susan for all the help she had given.",
         "target": {"span1_index": 2, "span1_text": "Susan", "span2_index": 7, "span2_text": "she"}, "label": True},
    )  # fmt: skip

    def examples_of(self, row: dict[str, Any], key: str, grouped: bool) -> list[Example]:
        text, target = _text(row, "text"), row["target"]
        span1, span2 = str(target["span1_text"]).strip(), str(target["span2_text"]).strip()
        if not span1 or not span2:
            raise ValueError("empty span")
        marked = mark_span(text, int(target["span2_index"]), span2)
        source = f"wsc text: {marked} span1: {span1} span2: {span2}"
        return [self.classified(key, source, self.label_index(row["label"]),
                                {"text_a": marked, "text_b": f"{span2} refers to {span1}"})]

    def from_hub(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        keys = ("span1_index", "span1_text", "span2_index", "span2_text")
        return [{"idx": r.get("idx"), "text": r.get("text"), "label": r.get("label"),
                 "target": {k: r.get(k) for k in keys}} for r in _hub_bool(rows)]


def mark_span(text: str, index: int, span: str) -> str:
    """`text` with the words of `span` at word `index` wrapped in asterisks; unchanged if they are not there."""
    words, size = text.split(), len(span.split())
    found = " ".join(words[index : index + size]).lower() if index >= 0 else ""
    if index + size <= len(words) and found.startswith(span.split()[0].lower()):
        words[index] = "*" + words[index]
        words[index + size - 1] += "*"
    return " ".join(words)


_HTML = re.compile(r"<b>Sent \d+: </b>|<[^>]+>")


@register_task("multirc")
class MultiRC(SuperGlueTask):
    """Multi-sentence reading comprehension: each answer option is one True/False example."""

    folder = "MultiRC"
    builtin = (
        {"idx": 0, "passage": {"text": "Tom has two dogs and a cat. The dogs are called Rex and Max. The cat sleeps "
         "all day.", "questions": [
             {"idx": 0, "question": "What pets does Tom have?", "answers": [
                 {"idx": 0, "text": "Two dogs and a cat", "label": 1}, {"idx": 1, "text": "A parrot", "label": 0},
                 {"idx": 2, "text": "Dogs", "label": 1}]},
             {"idx": 1, "question": "What are the dogs called?", "answers": [
                 {"idx": 3, "text": "Rex and Max", "label": 1}, {"idx": 4, "text": "Tom", "label": 0}]}]}},
    )  # fmt: skip

    def examples_of(self, row: dict[str, Any], key: str, grouped: bool) -> list[Example]:
        passage = " ".join(_HTML.sub(" ", str(row["passage"]["text"])).split())
        if not passage:
            raise ValueError("empty passage")
        out = []
        for q in row["passage"]["questions"]:
            question = _text(q, "question")
            for a in q["answers"]:
                answer = str(a["text"]).strip()
                source = f"multirc question: {question} answer: {answer} paragraph: {passage}"
                meta = {"question": f"{row['idx']}-{q['idx']}", "text_a": passage, "text_b": f"{question} {answer}"}
                out.append(self.classified(f"{key}-{q['idx']}-{a['idx']}", source, self.label_index(a["label"]), meta))
        return out

    def from_hub(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        passages: dict[Any, dict[str, Any]] = {}
        questions: dict[tuple[Any, Any], dict[str, Any]] = {}
        for r in rows:
            idx = r["idx"]
            passage = passages.setdefault(idx["paragraph"], {"idx": idx["paragraph"],
                                                             "passage": {"text": r["paragraph"], "questions": []}})
            key = (idx["paragraph"], idx["question"])
            if key not in questions:
                questions[key] = {"idx": idx["question"], "question": r["question"], "answers": []}
                passage["passage"]["questions"].append(questions[key])
            questions[key]["answers"].append({"idx": idx["answer"], "text": r["answer"], "label": r["label"]})
        return list(passages.values())

    def score(self, predictions: list[str], examples: list[Example]) -> dict[str, float]:
        from peftrun.metrics.classification import multirc_scores

        preds, golds = self._aligned(predictions, examples)
        questions = [str((e.meta or {})["question"]) for e in examples]
        return self.select_metrics({**multirc_scores(preds, golds, questions), "invalid": _invalid(preds)})


_HIGHLIGHT = re.compile(r"\n@highlight\n")


@register_task("record")
class ReCoRD(SuperGlueTask):
    """Cloze-style reading comprehension: fill @placeholder with a passage entity."""

    folder = "ReCoRD"
    head = "candidates"
    label_names = ()
    splits = ("train", "validation", "dev32")
    builtin = (
        {"idx": 0, "passage": {"text": "Chelsea beat Olimpija Ljubljana 2-1. Diego Costa and Kurt Zouma scored.\n"
         "@highlight\nJose Mourinho praised the players", "entities": [
             {"start": 0, "end": 6}, {"start": 13, "end": 30}, {"start": 37, "end": 47}, {"start": 53, "end": 62},
             {"start": 83, "end": 95}]},
         "qas": [{"idx": 0, "query": "@placeholder scored for Chelsea alongside Kurt Zouma.",
                  "answers": [{"start": 37, "end": 47, "text": "Diego Costa"}]},
                 {"idx": 1, "query": "Chelsea came back to beat @placeholder.",
                  "answers": [{"start": 13, "end": 30, "text": "Olimpija Ljubljana"}]}]},
    )  # fmt: skip

    def __init__(self, cfg: Any, data_dir: str | None = None) -> None:
        if cfg.verbalizers is not None:
            raise PeftrunError("record: the target is the answer entity; task.verbalizers does not apply (set null)")
        super().__init__(cfg, data_dir)

    def examples_of(self, row: dict[str, Any], key: str, grouped: bool) -> list[Example]:
        raw = str(row["passage"]["text"])
        entities: list[str] = []
        for span in row["passage"]["entities"]:
            entity = raw[int(span["start"]) : int(span["end"]) + 1].strip()  # official ends are inclusive
            if entity and entity not in entities:
                entities.append(entity)
        passage = " ".join(_HIGHLIGHT.sub(". ", raw).split())
        if not passage or not entities:
            raise ValueError("empty passage or no entities")
        out = []
        for qa in row["qas"]:
            query = _text(qa, "query")
            if "@placeholder" not in query:
                raise ValueError("query without @placeholder")
            answers = tuple(dict.fromkeys(str(a["text"]).strip() for a in qa["answers"] if str(a["text"]).strip()))
            if not answers:
                raise ValueError("no gold answer")
            label = next((i for i, e in enumerate(entities) if e in answers), -1)
            source = f"record query: {query} entities: {', '.join(entities)} passage: {passage}"
            meta = {"label": label, "answers": list(answers), "entities": entities, "text_a": passage,
                    "candidates": [query.replace("@placeholder", e) for e in entities]}
            qkey = f"{key}-{qa['idx']}"
            if grouped:
                out.append(Example(qkey, source, answers[0], answers, meta))
            else:
                out += [Example(f"{qkey}-{j}", source, a, answers, meta) for j, a in enumerate(answers)]
        return out

    def from_hub(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for r in rows:
            spans = r.get("entity_spans") or {}
            entities = [{"start": s, "end": e - 1} for s, e in zip(spans.get("start", []), spans.get("end", []),
                                                                    strict=False)]  # hub ends are exclusive
            idx = r.get("idx") or {}
            out.append({"idx": idx.get("passage"), "passage": {"text": r.get("passage"), "entities": entities},
                        "qas": [{"idx": idx.get("query"), "query": r.get("query"),
                                 "answers": [{"text": a} for a in r.get("answers") or []]}]})
        return out

    def label_of(self, prediction: str, example: Example) -> int:
        entities = [normalize_label(e) for e in (example.meta or {}).get("entities", [])]
        key = normalize_label(prediction)
        return entities.index(key) if key in entities else -1

    def score(self, predictions: list[str], examples: list[Example]) -> dict[str, float]:
        from peftrun.metrics.classification import record_scores

        if len(predictions) != len(examples):
            raise PeftrunError(f"{self.name}: {len(predictions)} predictions for {len(examples)} examples")
        return self.select_metrics(record_scores(predictions, [e.references for e in examples]))

