"""Super-NaturalInstructions tasks (Wang et al. 2022) as mixture members: "superni:<task file name>".

Data: `<paths.data_dir>/instructions/superni/tasks/<task>.json` (the shipped offline subset, see its README) and
its split lists `splits/{train,test}_tasks.txt`. In a mixture (peftrun/tasks/mixture.py) the selectors
"superni:train" / "superni:test" stand for every shipped task of that official split.

Encoding: Super-NI's "Def + Pos(2)" (Tk-Instruct's default): the task definition, its first two positive
examples, then the instance ("Now complete the following example - Input: ... Output:"); rendered by
peftrun/prompting/templates.py (template "definition+pos"). Splits: "train" and "test" both give the task's instances in file order
(a training task is trained on, a test task evaluated; the official evaluation uses the first 100 instances of
each test task: task.max_eval_examples=100).

Metrics, as Super-NI's eval/automatic/evaluation.py: exact match after its normalisation (SQuAD's without removing
articles: lower case, no punctuation, single spaces) and ROUGE-L F (rouge-score, Porter stemmer), each the max over an instance's references,
x 100.
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

from peftrun.errors import PeftrunError
from peftrun.tasks.base import Example, Task

PREFIX = "superni:"
SPLITS = ("train", "test")
DEFAULT_TEMPLATE = "definition+pos"


def superni_dir(data_dir: str | None) -> Path:
    path = Path(data_dir or "").expanduser() / "instructions" / "superni"
    if not (path / "tasks").is_dir():
        raise PeftrunError(f"Super-NaturalInstructions subset not found at {path}; set paths.data_dir to the shared "
                           "data folder (PEFTRUN_DATA_DIR) holding instructions/superni/")
    return path


def shipped_tasks(data_dir: str | None, split: str) -> list[str]:
    """Task names of the official `split` list that the shipped subset has files for, in list order."""
    base = superni_dir(data_dir)
    listed = (base / "splits" / f"{split}_tasks.txt").read_text(encoding="utf-8").split()
    return [name for name in listed if (base / "tasks" / f"{name}.json").is_file()]


def expand_members(names: list[str], data_dir: str | None) -> list[str]:
    """"superni:train" / "superni:test" -> one "superni:<task>" per shipped task of that split; others unchanged."""
    out = []
    for name in names:
        selector = name[len(PREFIX):] if name.startswith(PREFIX) else None
        out += [PREFIX + t for t in shipped_tasks(data_dir, selector)] if selector in SPLITS else [name]
    return out


# Super-NI "Source" names that FLAN (flan/clusters.json) spells differently
FLAN_SPELLING = {"cnn_dailymail": "cnn_dailymail", "triviaqa": "trivia_qa", "qqp": "glue_qqp", "sts_b": "stsb",
                 "web_nlg": "web_nlg_en", "e2e": "e2e_nlg", "wsc_fiexed": "wsc", "enhanced_wsc": "wsc",
                 "squad1.1": "squad_v1", "mrpc": "glue_mrpc", "boolq": "bool_q"}


def flan_source(source: str) -> str:
    """A Super-NI Source field as FLAN's task name where FLAN has the dataset ("Cnn-Dailymail https://..." ->
    cnn_dailymail), else lower-cased as is."""
    name = source.strip().split()[0].lower().replace("-", "_") if source.strip() else source
    return FLAN_SPELLING.get(name, name)


_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """Super-NI's exact-match normalisation: SQuAD's without removing articles (lower case, no ASCII punctuation,
    single spaces), as its eval/automatic/evaluation.py."""
    return " ".join("".join(ch for ch in text.lower() if ch not in _PUNCTUATION).split())


class SuperNITask(Task):
    """One Super-NI task file (module docstring). Built by the mixture for members named "superni:<task>"."""

    name = "superni"

    def __init__(self, cfg: Any, data_dir: str | None, task_name: str) -> None:
        super().__init__(cfg, data_dir)
        from peftrun.prompting.templates import find_template, load_templates

        self.task_name = task_name
        path = superni_dir(data_dir) / "tasks" / f"{task_name}.json"
        if not path.is_file():
            raise PeftrunError(f"no Super-NI task file {path}; the shipped tasks are in {path.parent} "
                               "(or use superni:train / superni:test)")
        from peftrun.prompting.templates import _read_json  # the cached reader of the template files

        self.data = _read_json(path)
        self.template = find_template(load_templates("superni", task_name, data_dir or ""), DEFAULT_TEMPLATE)
        sources = self.data.get("Source") or [task_name]
        self.source_dataset = flan_source(str(sources[0]))  # for the mixture's leakage check

    def load(self, split: str, grouped: bool) -> list[Example]:
        from peftrun.prompting.templates import render

        if split not in SPLITS:
            raise PeftrunError(f"{PREFIX}{self.task_name}: unknown split {split!r}; known: {', '.join(SPLITS)}")
        examples = []
        for i, instance in enumerate(self.data["Instances"]):
            outputs = tuple(str(o) for o in instance["output"]) or ("",)
            prompt, _ = render(self.template, {"input": instance["input"], "output": outputs[0]})
            key = instance.get("id") or f"{self.task_name}-{i}"
            if grouped:
                examples.append(Example(key, prompt, outputs[0], outputs, {"category": self.data["Categories"]}))
            else:
                examples += [Example(key, prompt, out, (out,), None) for out in outputs[:1]]
        return self.cap(examples, split)

    def score(self, predictions: list[str], examples: list[Example]) -> dict[str, float]:
        from peftrun.metrics.rouge import rouge_scores

        if len(predictions) != len(examples):
            raise PeftrunError(f"{PREFIX}{self.task_name}: {len(predictions)} predictions for {len(examples)} examples")
        exact = [max(normalize_answer(p) == normalize_answer(r) for r in e.references)
                 for p, e in zip(predictions, examples, strict=True)]
        rouge = rouge_scores(predictions, [list(e.references) for e in examples], rouge_types=("rougeL",))
        return self.select_metrics({"exact_match": 100.0 * sum(exact) / len(exact), "rougeL": rouge["rougeL"]})
