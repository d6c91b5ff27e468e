"""Classification and extraction metrics as the SuperGLUE and CoNLL papers report them, on a 0-100 scale.

Predictions are label ids; -1 means "no label" (a generated text that names no label): it is wrong for accuracy,
a false negative of the gold class for F1, and a false positive of no class.

- accuracy: fraction of predictions equal to the gold label.
- macro_f1 (CB): the unweighted mean over classes of F1_c = 2 TP_c / (2 TP_c + FP_c + FN_c), over the classes
  that occur in the golds or the predictions (scikit-learn's `f1_score(average="macro")`, zero_division=0).
- multirc_scores: F1a = binary F1 of the positive class (label 1) over all answer options; EM = fraction of
  questions whose answer options are all predicted correctly (SuperGLUE's MultiRC metrics).
- record_scores: per query, the maximum over gold answers of SQuAD token F1 and exact match after SQuAD's
  normalisation (lowercase, drop punctuation and the articles a/an/the, collapse whitespace); then the mean
  (ReCoRD's official record_evaluation.py).
- chunks / span_f1 (CoNLL-2003): entity spans from BIO tags by conlleval's chunk rules (IOB1 and IOB2 alike),
  micro precision, recall and F1 over exact (type, start, end) spans.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Hashable, Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def _check(n_pred: int, n_gold: int) -> None:
    if n_pred != n_gold:
        raise ValueError(f"{n_pred} predictions for {n_gold} golds; they must be aligned")
    if n_gold == 0:
        raise ValueError("no predictions to score")


def accuracy(predictions: Sequence[int], golds: Sequence[int]) -> float:
    """100 x the fraction of predictions equal to their gold label."""
    _check(len(predictions), len(golds))
    return 100.0 * sum(int(p == g) for p, g in zip(predictions, golds, strict=True)) / len(golds)


def _f1(tp: int, fp: int, fn: int) -> float:
    return 0.0 if tp == 0 else 2.0 * tp / (2.0 * tp + fp + fn)


def macro_f1(predictions: Sequence[int], golds: Sequence[int]) -> float:
    """100 x the mean per-class F1 over the classes present in golds or predictions (-1 is no class)."""
    _check(len(predictions), len(golds))
    classes = (set(golds) | set(predictions)) - {-1}
    scores = []
    for c in sorted(classes):
        tp = sum(1 for p, g in zip(predictions, golds, strict=True) if p == c and g == c)
        fp = sum(1 for p, g in zip(predictions, golds, strict=True) if p == c and g != c)
        fn = sum(1 for p, g in zip(predictions, golds, strict=True) if p != c and g == c)
        scores.append(_f1(tp, fp, fn))
    return 100.0 * sum(scores) / len(scores) if scores else 0.0


def multirc_scores(predictions: Sequence[int], golds: Sequence[int], questions: Sequence[Hashable]) -> dict[str, float]:
    """{"f1a", "em"} (0-100) for per-answer binary predictions; `questions` names each answer's question."""
    _check(len(predictions), len(golds))
    if len(questions) != len(golds):
        raise ValueError(f"{len(questions)} question ids for {len(golds)} answers")
    tp = sum(1 for p, g in zip(predictions, golds, strict=True) if p == 1 and g == 1)
    fp = sum(1 for p, g in zip(predictions, golds, strict=True) if p == 1 and g != 1)
    fn = sum(1 for p, g in zip(predictions, golds, strict=True) if p != 1 and g == 1)
    correct: dict[Hashable, bool] = {}
    for p, g, q in zip(predictions, golds, questions, strict=True):
        correct[q] = correct.get(q, True) and p == g
    return {"f1a": 100.0 * _f1(tp, fp, fn), "em": 100.0 * sum(correct.values()) / len(correct)}


def normalize_answer(text: str) -> str:
    """SQuAD / ReCoRD answer normalisation: lowercase, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def token_f1(prediction: str, gold: str) -> float:
    """SQuAD token F1 (0-1) between normalised prediction and gold, over bags of tokens."""
    pred_tokens, gold_tokens = normalize_answer(prediction).split(), normalize_answer(gold).split()
    common = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred_tokens), common / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def record_scores(predictions: Sequence[str], answers: Sequence[Sequence[str]]) -> dict[str, float]:
    """{"f1", "em"} (0-100): per query the max over its gold answers, then the mean over queries."""
    _check(len(predictions), len(answers))
    if any(len(a) == 0 for a in answers):
        raise ValueError("every query needs at least one gold answer")
    f1 = sum(max(token_f1(p, g) for g in golds) for p, golds in zip(predictions, answers, strict=True))
    em = sum(max(exact_match(p, g) for g in golds) for p, golds in zip(predictions, answers, strict=True))
    return {"f1": 100.0 * f1 / len(answers), "em": 100.0 * em / len(answers)}


def _split_tag(tag: str) -> tuple[str, str]:
    """"B-PER" -> ("B", "PER"); "O" (or anything unprefixed) -> ("O", "")."""
    if tag in ("O", "") or "-" not in tag:
        return "O", ""
    prefix, _, kind = tag.partition("-")
    return prefix, kind


def chunks(tags: Sequence[str]) -> set[tuple[str, int, int]]:
    """Entity spans (type, start, end exclusive) of a BIO tag sequence, by conlleval's chunk start/end rules.

    A chunk starts at B-X, or at I-X after O or after a tag of another type (IOB1); it ends before O, B-*, or a
    tag of another type. So IOB1 and IOB2 encodings of the same entities give the same spans.
    """
    spans: set[tuple[str, int, int]] = set()
    start, kind = -1, ""
    for i, tag in enumerate([*tags, "O"]):
        prefix, this = _split_tag(tag)
        ends = start >= 0 and (prefix in ("O", "B") or this != kind)
        if ends:
            spans.add((kind, start, i))
            start, kind = -1, ""
        if prefix in ("B", "I") and start < 0:
            start, kind = i, this
    return spans


def span_f1(predictions: Sequence[Sequence[str]], golds: Sequence[Sequence[str]]) -> dict[str, float]:
    """Micro {"precision", "recall", "f1"} (0-100) over exact entity spans of aligned tag sequences."""
    _check(len(predictions), len(golds))
    tp = n_pred = n_gold = 0
    for pred, gold in zip(predictions, golds, strict=True):
        p, g = chunks(pred), chunks(gold)
        tp, n_pred, n_gold = tp + len(p & g), n_pred + len(p), n_gold + len(g)
    return counts_to_prf(tp, n_pred, n_gold)


def counts_to_prf(tp: int, n_pred: int, n_gold: int) -> dict[str, float]:
    """Precision, recall, F1 (0-100) from true positives and the predicted / gold totals."""
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": 100.0 * precision, "recall": 100.0 * recall, "f1": 100.0 * f1}
