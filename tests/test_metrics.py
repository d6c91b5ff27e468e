"""Generation metrics against sacrebleu called directly, and one BLEU computed by hand."""

from __future__ import annotations

import math
import re

import pytest
import sacrebleu
from sacrebleu.metrics import BLEU, CHRF, TER

from peftrun.metrics.generation import corpus_bleu, generation_scores, reference_streams, webnlg_normalize

HYPS = [
    "The Eagle is a coffee shop in the city centre.",
    "Blue Spice serves French food near the river.",
    "Zizzi is a family friendly pub with a high customer rating.",
]
# ragged: 1, 3 and 2 references
REFS = [
    ["The Eagle is a coffee shop located in the city centre."],
    ["Blue Spice is a French restaurant by the river.", "Blue Spice serves French food.", "Near the river, Blue Spice serves French food."],
    ["Zizzi is a pub for families with a high rating.", "Zizzi is a family friendly pub rated highly by customers."],
]
# the same references written as sacrebleu's streams by hand: stream k = k-th reference of every input, None = none
STREAMS = [
    [REFS[0][0], REFS[1][0], REFS[2][0]],
    [None, REFS[1][1], REFS[2][1]],
    [None, REFS[1][2], None],
]


def test_single_reference_bleu_equals_sacrebleu() -> None:
    refs = [[r[0]] for r in REFS]
    expected = sacrebleu.corpus_bleu(HYPS, [[r[0] for r in REFS]]).score
    assert corpus_bleu(HYPS, refs) == pytest.approx(expected, abs=1e-9)
    assert corpus_bleu(HYPS, refs) < 100


def test_bleu_by_hand() -> None:
    # hyp/ref: 6 tokens each. Clipped matches: 1-grams 5/6, 2-grams 3/5, 3-grams 2/4, 4-grams 1/3; no brevity penalty.
    got = corpus_bleu(["the cat sat on the mat"], [["the cat sat on a mat"]])
    assert got == pytest.approx(100 * (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25, abs=1e-9)
    # brevity penalty: 4-token hypothesis, 6-token reference, all n-grams match -> 100 * exp(1 - 6/4)
    got = corpus_bleu(["the cat sat on"], [["the cat sat on a mat"]])
    assert got == pytest.approx(100 * math.exp(1 - 6 / 4), abs=1e-9)


def test_ragged_multi_reference_equals_padded_streams() -> None:
    assert reference_streams(REFS) == STREAMS
    expected = sacrebleu.corpus_bleu(HYPS, STREAMS).score
    assert corpus_bleu(HYPS, REFS) == pytest.approx(expected, abs=1e-9)
    # more references can only help: the multi-reference score beats the first-reference-only score
    assert corpus_bleu(HYPS, REFS) > corpus_bleu(HYPS, [[r[0]] for r in REFS])
    # the order of an input's references does not matter
    assert corpus_bleu(HYPS, [list(reversed(r)) for r in REFS]) == pytest.approx(expected, abs=1e-9)


def test_empty_padding_differs_from_none_only_through_closest_length() -> None:
    streams = reference_streams(REFS, pad_empty=True)
    assert streams[1][0] == "" and streams[2][2] == ""
    # a 1-token hypothesis is closest to the empty reference: "" counts as a reference of length 0 (multi-bleu.perl)
    short = ["Eagle", HYPS[1], HYPS[2]]
    none_padded = BLEU().corpus_score(short, reference_streams(REFS)).score
    empty_padded = BLEU().corpus_score(short, streams).score
    assert empty_padded > none_padded


def test_lowercase_changes_a_case_differing_score() -> None:
    hyps = ["THE EAGLE IS A COFFEE SHOP IN THE CITY CENTRE ."]
    refs = [["The Eagle is a coffee shop in the city centre ."]]
    assert corpus_bleu(hyps, refs, lowercase=True) == pytest.approx(100.0)
    cased = corpus_bleu(hyps, refs, lowercase=False)
    assert cased < 10
    assert cased == pytest.approx(sacrebleu.corpus_bleu(hyps, [[refs[0][0]]]).score, abs=1e-9)


@pytest.mark.parametrize("lowercase", [False, True])
def test_chrf_and_ter_equal_sacrebleu(lowercase: bool) -> None:
    got = generation_scores(HYPS, REFS, lowercase=lowercase)
    assert got["chrf"] == pytest.approx(CHRF(lowercase=lowercase).corpus_score(HYPS, STREAMS).score, abs=1e-9)
    assert got["ter"] == pytest.approx(TER(case_sensitive=not lowercase).corpus_score(HYPS, STREAMS).score, abs=1e-9)
    assert got["bleu"] == pytest.approx(BLEU(lowercase=lowercase).corpus_score(HYPS, STREAMS).score, abs=1e-9)
    assert set(got) == {"bleu", "chrf", "ter"}


def test_webnlg_normalize_matches_the_challenge_preprocessing() -> None:
    # evaluation.py: ' '.join(re.split('(\W)', unidecode(s.lower()))), then whitespace squeezed
    text = "Adolfo Suárez Madrid–Barajas Airport's runway is 18L/36R, 3.5 km."
    assert webnlg_normalize(text) == "adolfo suarez madrid - barajas airport ' s runway is 18l / 36r , 3 . 5 km ."
    ascii_text = "Aarhus Airport (AAR) serves Aarhus, Denmark."
    official = " ".join(" ".join(re.split(r"(\W)", ascii_text.lower())).split())
    assert webnlg_normalize(ascii_text) == official


def test_webnlg_style_uses_three_references_and_multi_bleu_semantics() -> None:
    hyps = ["Aarhus Airport serves the city of Aarhus, Denmark."]
    refs = [["Aarhus is in Denmark.", "The airport is big.", "It has one runway.", "Aarhus Airport serves the city of Aarhus, Denmark."]]
    assert corpus_bleu(hyps, refs, style="13a") == pytest.approx(100.0)
    webnlg = corpus_bleu(hyps, refs, style="webnlg")
    norm = [webnlg_normalize(r) for r in refs[0][:3]]
    expected = BLEU(tokenize="none", lowercase=True, force=True).corpus_score(
        [webnlg_normalize(hyps[0])], [[x] for x in norm]).score
    assert webnlg == pytest.approx(expected, abs=1e-9)
    assert webnlg < 50  # the matching fourth reference is not used


def test_misaligned_or_empty_inputs_raise() -> None:
    with pytest.raises(ValueError, match="aligned"):
        generation_scores(HYPS[:2], REFS)
    with pytest.raises(ValueError, match="no reference"):
        generation_scores(["x"], [[]])
    with pytest.raises(ValueError, match="style"):
        generation_scores(HYPS, REFS, style="moses")
