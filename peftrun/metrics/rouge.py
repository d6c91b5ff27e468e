"""ROUGE-1/2/L/Lsum with Google's rouge-score, as summarization papers report it (F-measure, Porter stemming).

Scores are rouge-score's F-measures x 100, averaged over inputs (the mean, which the bootstrap "mid" value of
rouge-score's BootstrapAggregator estimates; the mean is deterministic). With several references an input takes,
per ROUGE type, the reference with the best F-measure (rouge-score's `score_multi`).

rougeLsum is summary-level LCS over sentences, and rouge-score finds sentences only by newlines. Both sides are
therefore split into sentences first, one per line, as the HF summarization examples do with nltk's punkt. punkt
needs a model download, so `split_sentences` is a rule-based splitter that works offline: a sentence ends at
. ! or ? (plus closing quotes or brackets) followed by whitespace and an upper-case letter, digit or opening quote,
except after a known abbreviation (Mr. Dr. U.S. ...) or a single-letter initial (J. K. Rowling); existing line
breaks are kept as boundaries. rouge1/2/L ignore line breaks, so the splitter only affects rougeLsum.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")

_ABBREVIATIONS = (
    "mr mrs ms dr prof st jr sr vs etc e.g i.e u.s u.k u.n no nos inc ltd co corp gen sen rep gov lt col sgt capt "
    "mt ft fig al jan feb mar apr jun jul aug sep sept oct nov dec mon tue wed thu fri sat sun rev hon est approx "
    "dept univ assn bros"
)
ABBREVIATIONS = frozenset(_ABBREVIATIONS.split(" "))
_BOUNDARY = re.compile(r"""([.!?]+['"\u2019\u201d)\]]*)\s+(?=['"\u2018\u201c(\[]?[A-Z0-9])""")
_LAST_WORD = re.compile(r"(\S+)$")


def split_sentences(text: str) -> list[str]:
    """Sentences of `text` (see the module doc for the rules); never empty strings."""
    sentences: list[str] = []
    for line in text.splitlines():
        start = 0
        for match in _BOUNDARY.finditer(line):
            head = line[start : match.start()]
            word = _LAST_WORD.search(head)
            token = (word.group(1) if word else "").lower().lstrip("(\"'")
            if match.group(1).startswith(".") and (token in ABBREVIATIONS or re.fullmatch(r"[a-z]", token)):
                continue
            sentences.append(line[start : match.end(1)].strip())
            start = match.end()
        sentences.append(line[start:].strip())
    return [s for s in sentences if s]


def sentences_per_line(text: str) -> str:
    """`text` with one sentence per line: the input rougeLsum expects."""
    return "\n".join(split_sentences(text))


def rouge_scores(
    predictions: Sequence[str],
    references: Sequence[Sequence[str]],
    use_stemmer: bool = True,
    rouge_types: Sequence[str] = ROUGE_TYPES,
) -> dict[str, float]:
    """Mean F-measure x 100 per ROUGE type of aligned predictions and per-input reference lists."""
    from rouge_score.rouge_scorer import RougeScorer  # local: keeps `import peftrun.metrics` light

    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} inputs; they must be aligned")
    if not predictions:
        raise ValueError("no predictions to score")
    if any(len(r) == 0 for r in references):
        raise ValueError("every input needs at least one reference")
    scorer = RougeScorer(list(rouge_types), use_stemmer=use_stemmer)
    totals = dict.fromkeys(rouge_types, 0.0)
    for prediction, refs in zip(predictions, references, strict=True):
        scores = scorer.score_multi([sentences_per_line(r) for r in refs], sentences_per_line(prediction))
        for kind in rouge_types:
            totals[kind] += scores[kind].fmeasure
    return {kind: 100.0 * total / len(predictions) for kind, total in totals.items()}
