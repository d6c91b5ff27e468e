"""ROUGE (rouge-score) and the summarization tasks: documented examples, sentence splitting, loaders, scoring."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from peftrun.config import TaskConfig
from peftrun.errors import PeftrunError
from peftrun.metrics.rouge import rouge_scores, split_sentences
from peftrun.tasks.base import Example
from peftrun.tasks.summarization import CnnDailyMail, XSum
from tests.conftest import require_data


def task(cls, **overrides):
    name = "xsum" if cls is XSum else "cnn_dm"
    return cls(OmegaConf.structured(TaskConfig(name=name, **overrides)), None)


def test_rouge_score_readme_example_by_hand() -> None:
    # rouge-score's README example. Stemmed tokens: target "the quick brown fox jump over the lazi dog" (9),
    # prediction "the quick brown dog jump on the log" (8). Unigram overlap 6 (the x2, quick, brown, dog, jump);
    # bigram overlap 2 (the quick, quick brown) of 8 / 7; LCS 5 (the quick brown jump the).
    scores = rouge_scores(["The quick brown dog jumps on the log."], [["The quick brown fox jumps over the lazy dog"]])
    f = lambda p, r: 200 * p * r / (p + r)  # noqa: E731
    assert scores["rouge1"] == pytest.approx(f(6 / 8, 6 / 9))
    assert scores["rouge2"] == pytest.approx(f(2 / 7, 2 / 8))
    assert scores["rougeL"] == pytest.approx(f(5 / 8, 5 / 9))
    assert scores["rougeLsum"] == pytest.approx(scores["rougeL"])  # one sentence on each side


def test_hf_rouge_metric_card_examples() -> None:
    # The HF rouge metric card: identical pairs give 1.0; "hello goodbye" vs "goodbye" has rouge1 F 2/3.
    assert rouge_scores(["hello there", "general kenobi"], [["hello there"], ["general kenobi"]]) == {
        "rouge1": 100.0, "rouge2": 100.0, "rougeL": 100.0, "rougeLsum": 100.0}
    scores = rouge_scores(["hello goodbye", "ankh morpork"], [["goodbye"], ["ankh morpork"]])
    assert scores["rouge1"] == pytest.approx(100 * (2 / 3 + 1.0) / 2)


def test_matches_rouge_score_directly() -> None:
    from rouge_score.rouge_scorer import RougeScorer

    preds = ["Police arrested two men. They were charged on Friday.", "The match ended in a draw at Anfield."]
    refs = ["Two men have been charged after an arrest by police. A court hears the case on Friday.",
            "Liverpool and Everton drew at Anfield."]
    scorer = RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=True)
    expected = {k: 0.0 for k in ("rouge1", "rouge2", "rougeL", "rougeLsum")}
    for p, r in zip(preds, refs, strict=True):
        one = scorer.score("\n".join(split_sentences(r)), "\n".join(split_sentences(p)))
        for k in expected:
            expected[k] += 50 * one[k].fmeasure
    assert rouge_scores(preds, [[r] for r in refs]) == pytest.approx(expected)


def test_rougelsum_uses_sentence_splitting() -> None:
    # Swapped sentences: whole-text LCS is 4 of 8 tokens; summary-level LCS finds each sentence whole.
    scores = rouge_scores(["A dog ran off. The cat sat down."], [["The cat sat down. A dog ran off."]])
    assert scores["rougeL"] == pytest.approx(50.0)
    assert scores["rougeLsum"] == pytest.approx(100.0)


def test_multi_reference_takes_the_best() -> None:
    one = rouge_scores(["the cat sat"], [["a dog ran"]])
    best = rouge_scores(["the cat sat"], [["a dog ran", "the cat sat"]])
    assert one["rouge1"] == 0.0 and best["rouge1"] == 100.0


def test_split_sentences_offline() -> None:
    text = ('Mr. Smith met Dr. J. K. Rowling in Washington D.C. on Monday. The U.S. economy grew 2.5% in 2019! '
            'Did it? "Yes," he said.\nA new line')
    assert split_sentences(text) == [
        "Mr. Smith met Dr. J. K. Rowling in Washington D.C. on Monday.", "The U.S. economy grew 2.5% in 2019!",
        "Did it?", '"Yes," he said.', "A new line"]


def test_summarization_score_includes_sacrebleu_documented_bleu() -> None:
    # sacrebleu's README example (two reference streams): BLEU = 48.53.
    hyps = ["The dog bit the man.", "It wasn't surprising.", "The man had just bitten him."]
    refs = [("The dog bit the man.", "The dog had bit the man."), ("It was not unexpected.", "No one was surprised."),
            ("The man bit him first.", "The man had bitten the dog.")]
    examples = [Example(f"test-{i}", "doc", r[0], r, {}) for i, r in enumerate(refs)]
    scores = task(XSum, data_dir="builtin").score(hyps, examples)
    assert round(scores["bleu"], 2) == 48.53
    assert set(scores) == {"rouge1", "rouge2", "rougeL", "rougeLsum", "bleu"}


def test_builtin_sample_and_perfect_score() -> None:
    xsum = task(XSum, data_dir="builtin", max_eval_examples=3)
    examples = xsum.load("validation", grouped=True)
    assert len(examples) == 3 and all(e.references == (e.target,) for e in examples)
    assert xsum.score([e.target for e in examples], examples)["rouge2"] == 100.0


def test_local_jsonl_skips_malformed_rows_with_one_warning(tmp_path: Path, caplog) -> None:
    lines = [json.dumps({"document": "A long article.", "summary": "Short."}), "{not json",
             json.dumps({"document": "", "summary": "No document."}), json.dumps({"article": "Another one.",
                                                                                  "highlights": "Two."}), "[1, 2]"]
    (tmp_path / "train.jsonl").write_text("\n".join(lines) + "\n")
    with caplog.at_level(logging.WARNING):
        examples = task(CnnDailyMail, data_dir=str(tmp_path)).load("train", grouped=False)
    assert [(e.source, e.target) for e in examples] == [("A long article.", "Short."), ("Another one.", "Two.")]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "skipped 3 of 5" in warnings[0].getMessage()


def test_local_csv_and_source_target_pairs(tmp_path: Path) -> None:
    (tmp_path / "val.csv").write_text('article,highlights\n"Doc one, with a comma.",Sum one.\nDoc two.,Sum two.\n')
    (tmp_path / "test.source").write_text("first document\nsecond document\n")
    (tmp_path / "test.target").write_text("first summary\nsecond summary\n")
    cnn = task(CnnDailyMail, data_dir=str(tmp_path))
    assert [e.target for e in cnn.load("validation", grouped=True)] == ["Sum one.", "Sum two."]
    assert [e.source for e in cnn.load("test", grouped=True)] == ["first document", "second document"]
    with pytest.raises(PeftrunError, match="no file for split 'train'"):
        cnn.load("train", grouped=False)


def test_hub_fails_fast_offline(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PeftrunError, match="HF_HUB_OFFLINE is set and it is not in the datasets cache; set task.data_dir"):
        task(XSum, hub_id="EdinburghNLP/xsum").load("validation", grouped=True)


def test_shared_xsum_sample() -> None:
    folder = require_data("xsum")
    examples = task(XSum, data_dir=str(folder)).load("test", grouped=True)
    assert len(examples) == 10 and all(e.source and e.target for e in examples)
