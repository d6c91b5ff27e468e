"""Corpus-level generation metrics (BLEU, chrF, TER) with sacrebleu, multi-reference.

Inputs are aligned lists: `predictions[i]` is the system output for input i and `references[i]` every reference
of input i (ragged: inputs have different reference counts). sacrebleu wants reference *streams* instead
(stream k holds the k-th reference of every input), so `reference_streams` transposes and pads:

- padding with None (default): sacrebleu drops None references per segment, so each input is scored against
  exactly its own references (closest reference length, clipped n-gram counts over its references only);
- padding with "" (`pad_empty=True`): an empty reference is *kept* by sacrebleu (length 0, no n-grams). Its
  only effect is on the closest-reference length of a very short output. That is what multi-bleu.perl does
  with the blank lines of the WebNLG/DART reference files, so the "webnlg" style uses it for BLEU.

Styles (what each challenge's official scoring does, and how this module agrees):

- "13a" (E2E, synthetic, default): sacrebleu's corpus BLEU with its 13a tokenizer, which is the mteval-v13a
  tokenization. The E2E challenge's official `measure_scores.py` (tuetschek/e2e-metrics, `pymteval.BLEUScore`)
  tokenizes with the same mteval-v13a rules, is case-insensitive by default (`case_sensitive=False`), uses all
  references of an MR and the closest reference length (ties: the shorter). With lowercase=True this module
  reproduces the published E2E test BLEU of the challenge systems exactly (TGen baseline 65.93; see
  tests/test_score.py).
- "webnlg" (WebNLG 2017, DART): the WebNLG 2017 challenge's `evaluation.py` lowercases and converts to ASCII
  (unidecode), splits every non-word character off (`' '.join(re.split('(\\W)', s))`), keeps the first three
  references of each entry (blank lines where an entry has fewer) and runs `multi-bleu.perl -lc` on the result.
  DART's `run_eval_on_dart.sh` runs multi-bleu.perl on reference files made by the same pipeline (lowercased,
  `\\W`-split, three references). Here both predictions and references go through `webnlg_normalize`, BLEU
  is sacrebleu with tokenize="none" (whitespace split, as multi-bleu.perl) over the first three references,
  padded with "". Known difference: the ASCII folding is `unicodedata` NFKD plus a small table instead of the
  unidecode package (same result on accented Latin letters, dashes and quotes; other scripts are kept as is).
  Note LoRA (Hu et al.) scored WebNLG/DART differently (GEM GenerationEval: multi-bleu-detok.perl over up to
  six lowercased references per distinct input), so its numbers are not directly comparable.

chrF and TER are sacrebleu's defaults (chrF2, TER with the tercom normalization off) on the same references
padded with None; TER is case-sensitive unless `lowercase`. All scores are on sacrebleu's 0-100 scale.

TER's shift search costs grow fast with the hypothesis length (a degenerate model that writes 100+ words per E2E
MR makes an evaluation spend minutes in TER). So when a hypothesis has more than TER_MAX_RATIO times the words of
its longest reference plus TER_SLACK_WORDS, TER is not computed: the scores hold `ter_skipped_long` (how many
hypotheses were that long) instead of `ter`, and a warning says so. Predictions of normal length never hit it.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Sequence

# Characters NFKD does not decompose to ASCII, mapped as unidecode maps them.
_ASCII_EXTRA = str.maketrans(
    {
        "\u2010": "-", "\u2011": "-", "\u2012": "-", "\u2013": "-", "\u2014": "-", "\u2015": "-", "\u2212": "-",
        "\u2018": "'", "\u2019": "'", "\u201a": ",", "\u201b": "'", "\u2032": "'",
        "\u201c": '"', "\u201d": '"', "\u201e": ",,", "\u2033": '"', "\u00ab": "<<", "\u00bb": ">>",
        "\u2026": "...", "\u00a0": " ", "\u00b7": "*", "\u2022": "*",
        "\u00df": "ss", "\u00e6": "ae", "\u00c6": "AE", "\u0153": "oe", "\u0152": "OE",
        "\u00f8": "o", "\u00d8": "O", "\u0111": "d", "\u0110": "D", "\u0142": "l", "\u0141": "L",
        "\u00f0": "d", "\u00d0": "D", "\u00fe": "th", "\u00de": "Th", "\u0131": "i",
    }
)  # fmt: skip

STYLES = ("13a", "webnlg")
TER_MAX_RATIO = 4
TER_SLACK_WORDS = 16
log = logging.getLogger(__name__)


def too_long_for_ter(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> int:
    """How many hypotheses exceed TER_MAX_RATIO x their longest reference + TER_SLACK_WORDS (whitespace words)."""
    return sum(len(h.split()) > TER_MAX_RATIO * max(len(x.split()) for x in r) + TER_SLACK_WORDS
               for h, r in zip(hypotheses, references, strict=True))


def ascii_fold(text: str) -> str:
    """Accented Latin letters to their base letters, typographic dashes/quotes to ASCII (unidecode-like)."""
    decomposed = unicodedata.normalize("NFKD", text.translate(_ASCII_EXTRA))
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


def webnlg_normalize(text: str) -> str:
    """The WebNLG 2017 challenge's preprocessing: lowercase, ASCII, every non-word character split off."""
    split = " ".join(re.split(r"(\W)", ascii_fold(text.lower())))
    return " ".join(split.split())


def reference_streams(
    references: Sequence[Sequence[str]], pad_empty: bool = False, max_refs: int | None = None
) -> list[list[str | None]]:
    """Transpose per-input reference lists into sacrebleu's streams, padding ragged lists.

    references: N lists (one per input) of 1..R_i strings. Returns max_i(R_i) streams of N entries, where
    stream k, entry i is references[i][k] or the pad (None, or "" with pad_empty). `max_refs` keeps only the
    first max_refs references of each input. Stream 0 never holds None for an input with a reference.
    """
    refs = [list(r)[:max_refs] if max_refs is not None else list(r) for r in references]
    if any(len(r) == 0 for r in refs):
        empty = next(i for i, r in enumerate(refs) if len(r) == 0)
        raise ValueError(f"input {empty} has no reference; every input needs at least one")
    width = max((len(r) for r in refs), default=0)
    pad: str | None = "" if pad_empty else None
    return [[r[k] if k < len(r) else pad for r in refs] for k in range(width)]


def _check_aligned(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} inputs; they must be aligned")
    if not predictions:
        raise ValueError("no predictions to score")


def corpus_bleu(
    predictions: Sequence[str],
    references: Sequence[Sequence[str]],
    lowercase: bool = False,
    style: str = "13a",
) -> float:
    """Corpus BLEU (0-100) of aligned predictions against per-input reference lists; see the module doc."""
    return generation_scores(predictions, references, lowercase=lowercase, style=style, metrics=("bleu",))["bleu"]


def generation_scores(
    predictions: Sequence[str],
    references: Sequence[Sequence[str]],
    lowercase: bool = False,
    style: str = "13a",
    metrics: Sequence[str] = ("bleu", "chrf", "ter"),
) -> dict[str, float]:
    """{"bleu", "chrf", "ter"} (each 0-100; lower TER is better) for aligned predictions and reference lists.

    style "13a": raw text, sacrebleu's 13a tokenizer, all references, `lowercase` as given.
    style "webnlg": `webnlg_normalize` on both sides (always lowercase), first three references; BLEU pads with ""
    as multi-bleu.perl reads blank reference lines.
    """
    from sacrebleu.metrics import BLEU, CHRF, TER  # local: keeps `import peftrun.metrics` light

    if style not in STYLES:
        raise ValueError(f"unknown BLEU style {style!r}; known: {', '.join(STYLES)}")
    _check_aligned(predictions, references)
    hyps = [str(p) for p in predictions]
    refs = [list(r) for r in references]
    max_refs: int | None = None
    if style == "webnlg":
        hyps = [webnlg_normalize(h) for h in hyps]
        refs = [[webnlg_normalize(x) for x in r] for r in refs]
        max_refs, lowercase = 3, True

    out: dict[str, float] = {}
    if "bleu" in metrics:
        bleu = BLEU(
            lowercase=lowercase,
            tokenize="none" if style == "webnlg" else "13a",
            force=True,  # tokenized-looking text is expected for the webnlg style; silence the warning
        )
        streams = reference_streams(refs, pad_empty=style == "webnlg", max_refs=max_refs)
        out["bleu"] = float(bleu.corpus_score(hyps, streams).score)
    streams = reference_streams(refs, max_refs=max_refs)
    if "chrf" in metrics:
        out["chrf"] = float(CHRF(lowercase=lowercase).corpus_score(hyps, streams).score)
    if "ter" in metrics:
        long = too_long_for_ter(hyps, refs)
        if long:
            log.warning("TER not computed: %d of %d predictions are over %dx their longest reference + %d words "
                        "(recorded as ter_skipped_long)", long, len(hyps), TER_MAX_RATIO, TER_SLACK_WORDS)
            out["ter_skipped_long"] = float(long)
        else:
            out["ter"] = float(TER(case_sensitive=not lowercase).corpus_score(hyps, streams).score)
    return out
