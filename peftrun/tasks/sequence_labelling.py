"""Sequence labelling: CoNLL-2003 English NER (Tjong Kim Sang & De Meulder 2003), as P-tuning v2 evaluates it.

Data (first that applies):
- task.data_dir=DIR with CoNLL-style files: train.txt | eng.train -> train, valid.txt | dev.txt | eng.testa ->
  validation, test.txt | eng.testb -> test. One token a line with its tag in the last column ("EU NNP B-NP
  B-ORG"), a blank line between sentences, -DOCSTART- lines ignored. Tags may be IOB1 (the original release) or
  IOB2; they are converted to IOB2, which gives the same entity spans under conlleval's rules;
- task.data_dir=builtin: four sentences, the same for every split (tests, smoke runs);
- task.data_dir=null: the hub (task.hub_id, e.g. eriktks/conll2003: tokens and ner_tags in LABELS order).
A sentence with a line that has no tag column or a tag outside LABELS is skipped and counted in one warning.

Formulations:
- head (encoders, P-tuning v2): "token": meta["tokens"], meta["tags"] (IOB2 strings) and meta["tag_ids"]
  (indices into label_names); the head's prediction is passed to `score` as the space-separated tag sequence.
- text-to-text: source = "ner: " + the sentence; target = the entities in order, "EU [ORG] ; German [MISC]",
  or "none".

Metrics (0-100): micro precision / recall / F1 over entities. A tag-sequence prediction (as many valid tags as
words) is scored by exact spans (type, start, end), conlleval's span-level F1; a text prediction by the multiset
of (type, entity text) pairs, since generated text has no positions.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any, ClassVar

from peftrun.errors import PeftrunError
from peftrun.metrics.classification import chunks, counts_to_prf
from peftrun.tasks.base import BUILTIN, Example, Task, register_task
from peftrun.tasks.loading import cached_parse, hub_split, load_hub, read_text, require_dir, warn_skipped

LABELS = ("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC")
FILES = {"train": ("train.txt", "eng.train"), "validation": ("valid.txt", "dev.txt", "eng.testa"),
         "test": ("test.txt", "eng.testb")}
NO_ENTITY = "none"
_ENTITY = re.compile(r"^(.*?)\s*\[([A-Za-z]+)\]$")

Sentence = tuple[list[str], list[str]]

BUILTIN_SENTENCES: tuple[Sentence, ...] = (
    (["EU", "rejects", "German", "call", "to", "boycott", "British", "lamb", "."],
     ["B-ORG", "O", "B-MISC", "O", "O", "O", "B-MISC", "O", "O"]),
    (["Peter", "Blackburn"], ["B-PER", "I-PER"]),
    (["BRUSSELS", "1996-08-22"], ["B-LOC", "O"]),
    (["The", "European", "Commission", "said", "on", "Thursday", "it", "disagreed", "with", "German", "advice", "."],
     ["O", "B-ORG", "I-ORG", "O", "O", "O", "O", "O", "O", "B-MISC", "O", "O"]),
)  # fmt: skip


def to_iob2(tags: list[str]) -> list[str]:
    """IOB1 -> IOB2: an I-X that starts an entity (after O or another type) becomes B-X."""
    out = []
    for i, tag in enumerate(tags):
        if tag.startswith("I-") and (i == 0 or tags[i - 1] == "O" or tags[i - 1][2:] != tag[2:]):
            tag = "B-" + tag[2:]
        out.append(tag)
    return out


def read_conll(path: Path) -> tuple[list[Sentence], int]:
    """(sentences, malformed sentences) of a CoNLL-style file."""
    sentences: list[Sentence] = []
    bad = 0
    tokens: list[str] = []
    tags: list[str] = []
    broken = False

    def flush() -> None:
        nonlocal tokens, tags, broken, bad
        if tokens or broken:
            if broken:
                bad += 1
            else:
                sentences.append((tokens, to_iob2(tags)))
        tokens, tags, broken = [], [], False

    for line in read_text(path, "conll2003").splitlines():
        fields = line.split()
        if not fields:
            flush()
            continue
        if fields[0] == "-DOCSTART-":
            continue
        if len(fields) < 2 or fields[-1] not in LABELS:
            broken = True
            continue
        tokens.append(fields[0])
        tags.append(fields[-1])
    flush()
    return sentences, bad


def entities(tokens: list[str], tags: list[str]) -> list[tuple[str, str]]:
    """(type, text) of each entity, in sentence order."""
    return [(kind, " ".join(tokens[start:end])) for kind, start, end in sorted(chunks(tags), key=lambda c: c[1])]


def render_entities(found: list[tuple[str, str]]) -> str:
    return " ; ".join(f"{text} [{kind}]" for kind, text in found) or NO_ENTITY


def parse_entities(text: str) -> list[tuple[str, str]]:
    """"EU [ORG] ; German [MISC]" -> [("ORG", "EU"), ("MISC", "German")]; unparsable items are dropped."""
    if text.strip().lower() == NO_ENTITY:
        return []
    out = []
    for item in text.split(";"):
        match = _ENTITY.match(item.strip())
        if match and match.group(1).strip():
            out.append((match.group(2).upper(), " ".join(match.group(1).split())))
    return out


@register_task("conll2003")
class Conll2003(Task):
    head: ClassVar[str | None] = "token"
    options: ClassVar[tuple[str, ...]] = ("hub_id",)
    label_names: ClassVar[tuple[str, ...]] = LABELS
    splits: ClassVar[tuple[str, ...]] = ("train", "validation", "test")

    def sentences(self, split: str) -> tuple[list[Sentence], int, str]:
        if self.cfg.data_dir == BUILTIN:
            return [(list(t), list(g)) for t, g in BUILTIN_SENTENCES], 0, "built-in conll2003 sample"
        if self.cfg.data_dir:
            folder = require_dir(self.cfg.data_dir, self.name)
            path = next((folder / n for n in FILES[split] if (folder / n).is_file()), None)
            if path is None:
                raise PeftrunError(f"{self.name}: no {' / '.join(FILES[split])} in {folder}; set task.data_dir to the "
                                   "folder of the CoNLL-2003 files")
            found, bad = cached_parse(self.name, split, [path], lambda: read_conll(path))  # type: ignore[arg-type]
            return found, bad, str(path)
        rows = hub_split(load_hub(self.name, self.cfg.hub_id, ""), split, self.name, str(self.cfg.hub_id))
        found, bad = [], 0
        for row in rows:
            try:
                tokens = [str(t) for t in row["tokens"]]
                tags = [LABELS[int(i)] for i in row["ner_tags"]]
            except (KeyError, TypeError, ValueError, IndexError):
                bad += 1
                continue
            found.append((tokens, tags))
        return found, bad, f"hub {self.cfg.hub_id} {split}"

    def load(self, split: str, grouped: bool) -> list[Example]:
        if split not in self.splits:
            raise PeftrunError(f"{self.name}: unknown split {split!r}; known: {', '.join(self.splits)}")
        found, bad, where = self.sentences(split)
        examples = []
        for i, (tokens, tags) in enumerate(found):
            if not tokens or len(tokens) != len(tags):
                bad += 1
                continue
            target = render_entities(entities(tokens, tags))
            meta: dict[str, Any] = {"tokens": tokens, "tags": tags, "tag_ids": [LABELS.index(t) for t in tags]}
            examples.append(Example(f"{split}-{i}", "ner: " + " ".join(tokens), target, (target,), meta))
        warn_skipped(bad, len(found) + bad, where, "a line without a tag or an unknown tag")
        return self.cap(examples, split)

    def score(self, predictions: list[str], examples: list[Example]) -> dict[str, float]:
        if len(predictions) != len(examples):
            raise PeftrunError(f"{self.name}: {len(predictions)} predictions for {len(examples)} examples")
        tp = n_pred = n_gold = 0
        for prediction, example in zip(predictions, examples, strict=True):
            tokens, tags = (example.meta or {})["tokens"], (example.meta or {})["tags"]
            words = prediction.split()
            if len(words) == len(tokens) and all(w in LABELS for w in words):
                pred_spans, gold_spans = Counter(chunks(words)), Counter(chunks(tags))
            else:
                pred_spans, gold_spans = Counter(parse_entities(prediction)), Counter(entities(tokens, tags))
            tp += sum((pred_spans & gold_spans).values())
            n_pred += sum(pred_spans.values())
            n_gold += sum(gold_spans.values())
        scores = counts_to_prf(tp, n_pred, n_gold)
        return self.select_metrics({"f1": scores["f1"], "precision": scores["precision"], "recall": scores["recall"]})
