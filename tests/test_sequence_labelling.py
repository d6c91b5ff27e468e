"""Sequence labelling (CoNLL-2003): conlleval chunking, span F1 by hand, the file reader, both formulations."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from peftrun.config import TaskConfig
from peftrun.errors import PeftrunError
from peftrun.metrics.classification import chunks, span_f1
from peftrun.tasks.sequence_labelling import Conll2003, parse_entities, read_conll, to_iob2


def conll(**overrides) -> Conll2003:
    return Conll2003(OmegaConf.structured(TaskConfig(name="conll2003", **overrides)), None)


def test_chunks_follow_conlleval_for_iob1_and_iob2() -> None:
    iob2 = ["B-PER", "I-PER", "O", "B-LOC", "B-LOC", "I-ORG", "I-ORG", "O", "I-MISC"]
    assert chunks(iob2) == {("PER", 0, 2), ("LOC", 3, 4), ("LOC", 4, 5), ("ORG", 5, 7), ("MISC", 8, 9)}
    iob1 = ["I-PER", "I-PER", "O", "I-LOC", "B-LOC", "I-ORG", "I-ORG", "O", "I-MISC"]  # the original release's style
    assert chunks(iob1) == chunks(iob2) and to_iob2(iob1) == ["B-PER", "I-PER", "O", "B-LOC", "B-LOC", "B-ORG",
                                                              "I-ORG", "O", "B-MISC"]


def test_span_f1_by_hand() -> None:
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    pred = [["B-PER", "O", "O", "B-LOC"], ["B-ORG", "B-MISC"]]
    # gold spans: PER(0,2) LOC(3,4) ORG(0,1) = 3; predicted: PER(0,1) LOC ORG MISC = 4; correct: LOC, ORG = 2
    scores = span_f1(pred, gold)
    assert scores["precision"] == pytest.approx(50.0) and scores["recall"] == pytest.approx(200 / 3)
    assert scores["f1"] == pytest.approx(100 * 2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))


def test_read_conll_skips_docstart_and_malformed_sentences(tmp_path: Path, caplog) -> None:
    path = tmp_path / "valid.txt"
    path.write_text("-DOCSTART- -X- -X- O\n\nEU NNP B-NP I-ORG\nrejects VBZ B-VP O\n\nbad\nline NN O\n\n"
                    "Peter NNP B-NP I-PER\nBlackburn NNP I-NP I-PER\n\nx NN B-NP B-WHAT\n")
    sentences, bad = read_conll(path)
    assert sentences == [(["EU", "rejects"], ["B-ORG", "O"]), (["Peter", "Blackburn"], ["B-PER", "I-PER"])]
    assert bad == 2
    with caplog.at_level(logging.WARNING):
        examples = conll(data_dir=str(tmp_path)).load("validation", grouped=True)
    assert [e.target for e in examples] == ["EU [ORG]", "Peter Blackburn [PER]"]
    assert "skipped 2 of 4" in caplog.text
    with pytest.raises(PeftrunError, match="no train.txt / eng.train"):
        conll(data_dir=str(tmp_path)).load("train", grouped=False)


def test_both_formulations_score_entities() -> None:
    task = conll(data_dir="builtin")
    examples = task.load("validation", grouped=True)
    assert examples[0].source == "ner: EU rejects German call to boycott British lamb ."
    assert examples[0].target == "EU [ORG] ; German [MISC] ; British [MISC]" and examples[2].target == "BRUSSELS [LOC]"
    assert examples[0].meta["tag_ids"][:3] == [task.label_names.index(t) for t in ("B-ORG", "O", "B-MISC")]
    assert task.formulation("encoder") == "token" and task.formulation("decoder") == "text"
    assert task.score([" ".join(e.meta["tags"]) for e in examples], examples)["f1"] == 100.0  # head: tag sequences
    assert task.score([e.target for e in examples], examples)["f1"] == 100.0  # text-to-text
    # gold: 3 + 1 + 1 + 2 = 7 entities; predicted 4: EU (right), German as LOC (wrong), a tag sequence with the
    # ORG right, and "none"
    predictions = ["EU [ORG] ; German [LOC]", "none", "O O", "O B-ORG I-ORG O O O O O O O O O"]
    scores = task.score(predictions, examples)
    assert scores["precision"] == pytest.approx(200 / 3) and scores["recall"] == pytest.approx(200 / 7)


def test_parse_entities_tolerates_noise() -> None:
    assert parse_entities("EU [org] ;  German  call [MISC] ; junk ; [PER]") == [("ORG", "EU"), ("MISC", "German call")]
    assert parse_entities("None") == []
