"""Head formulations (encoders): the runner end to end on tiny-bert, the head losses against transformers' own,
word-piece alignment, candidate scoring, the fail-fast length check, and soft prompts fed the tokenizer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from peftrun.backbones.load import load_backbone
from peftrun.backbones.tiny import TINY_CONFIGS
from peftrun.config import BackboneConfig, MethodConfig, PathsConfig, RunConfig, TaskConfig
from peftrun.data import IGNORE_INDEX
from peftrun.errors import PeftrunError
from peftrun.formulation import resolve_formulation
from peftrun.head_data import (
    HeadCollator,
    HeadDataset,
    HeadFeature,
    HeadFeatures,
    align_token_labels,
    encode_head_examples,
    word_spans,
)
from peftrun.heads import HeadTrainer, candidate_scores, head_loss, label_strings, predict
from peftrun.lengths import check_input_lengths, check_lengths
from peftrun.methods import apply_method, load_method
from peftrun.tasks.base import Example, build_task
from peftrun.tasks.sequence_labelling import LABELS
from tests.conftest import ROOT

HIDDEN = TINY_CONFIGS["bert"][1]["hidden_size"]
# 4 built-in examples, trained on and evaluated (train = validation there): a working head memorises them
MEMORISE = ["task.data_dir=builtin", "trainer.max_steps=40", "trainer.batch_size=4", "trainer.lr=1e-2", "logger=none"]


def peftrun(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "peftrun", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def finished_run(run_dir: Path, proc: subprocess.CompletedProcess) -> tuple[dict, list[dict]]:
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((run_dir / "results.json").read_text())
    assert record["status"] == "complete" and record["backbone"]["family"] == "bert"
    rows = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]
    assert rows and all({"split", "id", "input", "prediction", "references"} <= set(r) for r in rows)
    assert record["data"]["validation"]["examples"] == len(rows)
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
    return record, rows


def tiny_bert(head: str, num_labels: int):
    cfg = BackboneConfig(name="tiny-bert", family="bert", source="tiny")
    backbone = load_backbone(cfg, PathsConfig(cache_dir=os.environ["PEFTRUN_CACHE_DIR"]), head=head,
                             num_labels=num_labels)
    backbone.model.eval()
    return backbone


def builtin_task(name: str, **overrides):
    return build_task(OmegaConf.merge(OmegaConf.structured(TaskConfig), OmegaConf.load(ROOT / "conf" / "task" /
                                                                                      f"{name}.yaml"),
                                      {"data_dir": "builtin", **overrides}))


# ------------------------------------------------------------------------------------------- end to end (CLI)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, subprocess.CompletedProcess]]:
    """One `peftrun -m` process, one job per head formulation: task -> (run dir, process)."""
    root = tmp_path_factory.mktemp("heads-sweep")
    proc = peftrun("-m", "backbone=tiny-bert", "method=lora", "task=rte,copa,conll2003", *MEMORISE,
                   f"hydra.sweep.dir={root}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {path.name.split("_")[-1]: (path, proc) for path in root.iterdir() if path.is_dir()}


def test_rte_classification_head_trains_and_is_saved_with_the_method(sweep) -> None:
    run_dir, proc = sweep["rte"]
    record, rows = finished_run(run_dir, proc)
    assert record["backbone"]["class"] == "BertForSequenceClassification"
    assert record["metrics"]["validation"] == {"accuracy": 100.0, "invalid": 0.0}  # memorised the 4 pairs
    assert [r["prediction"] for r in rows] == [r["references"][0] for r in rows]
    assert record["train"]["steps"] == 40 and record["train"]["final_loss"] < 0.5
    params = record["params"]
    classifier = HIDDEN * 2 + 2  # new head: trains with LoRA (train=none), saved in the adapter
    assert params["trainable"] == params["per_delta"]["lora"]["trainable"] + classifier == params["saved"]
    saved = load_file(run_dir / "adapter" / "adapter_model.safetensors")
    assert {k for k in saved if k.startswith("backbone.")} == {"backbone.classifier.weight", "backbone.classifier.bias"}


def test_copa_scores_candidates(sweep) -> None:
    run_dir, proc = sweep["copa"]
    record, rows = finished_run(run_dir, proc)
    assert record["backbone"]["class"] == "BertForSequenceClassification"
    assert record["params"]["trainable"] == record["params"]["per_delta"]["lora"]["trainable"] + HIDDEN + 1  # 1 logit
    assert record["metrics"]["validation"]["accuracy"] == 100.0
    assert {r["prediction"] for r in rows} == {"choice1", "choice2"}


def test_conll2003_tags_every_word(sweep) -> None:
    run_dir, proc = sweep["conll2003"]
    record, rows = finished_run(run_dir, proc)
    assert record["backbone"]["class"] == "BertForTokenClassification"
    scores = record["metrics"]["validation"]
    assert set(scores) == {"f1", "precision", "recall"} and all(0.0 <= v <= 100.0 for v in scores.values())
    assert scores["f1"] == 100.0
    for row in rows:
        tags = row["prediction"].split()
        assert len(tags) == len(row["input"].split()) - 1 and set(tags) <= set(LABELS)  # "ner: " + words


def test_prompt_tuning_init_text_gets_the_tokenizer(tmp_path: Path) -> None:
    """`method=prompt_tuning method.init=text` end to end; lr 0 keeps the prompt at its initialisation."""
    text = "What was the cause"
    proc = peftrun("backbone=tiny-bert", "method=prompt_tuning", "method.init=text", f"method.deltas.0.text={text}",
                   "method.length=6", "task=copa", "task.data_dir=builtin", "trainer.max_steps=2", "trainer.lr=0",
                   "logger=none", f"hydra.run.dir={tmp_path}")
    record, _ = finished_run(tmp_path, proc)
    assert 0.0 <= record["metrics"]["validation"]["accuracy"] <= 100.0
    prompt = load_file(tmp_path / "adapter" / "adapter_model.safetensors")["deltas.prompt_tuning.prompt"]
    backbone = tiny_bert("classification", 1)
    ids = backbone.tokenizer(text, add_special_tokens=False)["input_ids"][:6]
    assert len(ids) >= 2
    expected = backbone.model.get_input_embeddings().weight[ids]
    torch.testing.assert_close(prompt[: len(ids)], expected)


def test_too_long_inputs_fail_fast_before_loading(tmp_path: Path) -> None:
    started = time.perf_counter()
    proc = peftrun("backbone=tiny-gpt2", "task=xsum", "task.max_source_length=1000", f"hydra.run.dir={tmp_path}")
    elapsed = time.perf_counter() - started
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: task.max_source_length + task.max_target_length = 1000 + 64 = 1064 but "
                               "backbone 'tiny-gpt2' reads at most 512 positions (n_positions)")
    assert "task.max_source_length=448" in lines[0]
    assert not (tmp_path / "results.json").exists()
    assert elapsed < 5.0, f"{elapsed:.1f} s"


# ------------------------------------------------------------------------------------------- losses


def test_classification_loss_equals_the_models_own() -> None:
    task = builtin_task("rte")
    backbone = tiny_bert("classification", len(task.label_names))
    examples = task.load("validation", grouped=True)
    data = encode_head_examples(examples, backbone.tokenizer, "classification", 64)
    batch = HeadCollator(backbone.tokenizer.pad_token_id, "classification")(data.features)
    assert batch["token_type_ids"].max() == 1  # BERT pairs: segment 1 for text_b
    assert batch["labels"].tolist() == [e.meta["label"] for e in examples]
    with torch.no_grad():
        loss_sum, count = head_loss(backbone.model, batch, "classification")
        reference = backbone.model(**batch).loss  # mean cross-entropy
    assert count == len(examples)
    torch.testing.assert_close(loss_sum / count, reference)


def test_token_loss_equals_the_models_own_over_first_subtokens() -> None:
    task = builtin_task("conll2003")
    backbone = tiny_bert("token", len(LABELS))
    examples = task.load("validation", grouped=True)
    data = encode_head_examples(examples, backbone.tokenizer, "token", 64)
    batch = HeadCollator(backbone.tokenizer.pad_token_id, "token")(data.features)
    with torch.no_grad():
        loss_sum, count = head_loss(backbone.model, batch, "token")
        reference = backbone.model(**batch).loss
    assert count == sum(len(e.meta["tokens"]) for e in examples)  # one label per word
    torch.testing.assert_close(loss_sum / count, reference)


def test_candidate_loss_is_a_softmax_over_each_examples_candidates() -> None:
    logits = torch.tensor([[0.1], [2.0], [0.5], [-1.0], [3.0]])  # example 0: 2 candidates, example 1: 3
    batch = {"input_ids": torch.zeros(5, 1, dtype=torch.long), "labels": torch.tensor([0, 2]),
             "candidate_counts": torch.tensor([2, 3])}

    def model(**inputs):
        assert set(inputs) == {"input_ids"}  # labels and candidate_counts are not model inputs
        return SimpleNamespace(logits=logits)

    loss_sum, count = head_loss(model, batch, "candidates")
    expected = (torch.nn.functional.cross_entropy(logits[:2, 0][None], torch.tensor([0]), reduction="sum")
                + torch.nn.functional.cross_entropy(logits[2:, 0][None], torch.tensor([2]), reduction="sum"))
    assert count == 2
    torch.testing.assert_close(loss_sum, expected)
    smoothed, _ = head_loss(model, batch, "candidates", label_smoothing=0.1)
    reference = (torch.nn.functional.cross_entropy(logits[:2, 0][None], torch.tensor([0]), label_smoothing=0.1)
                 + torch.nn.functional.cross_entropy(logits[2:, 0][None], torch.tensor([2]), label_smoothing=0.1))
    torch.testing.assert_close(smoothed, reference)  # the padded candidate slot gets no smoothing mass


# ------------------------------------------------------------------------------------------- alignment


def test_word_piece_alignment_on_a_hand_example() -> None:
    sentence, owner = word_spans(["EU", "rejects", "German"])
    assert sentence == "EU rejects German"
    # [CLS] E U Ġr e j ect s ĠG er man [SEP]; "Ġr" / "ĠG" carry the space before their word (BERT-style offsets)
    offsets = [(0, 0), (0, 1), (1, 2), (2, 4), (4, 5), (5, 6), (6, 9), (9, 10), (10, 12), (12, 14), (14, 17), (0, 0)]
    labels, starts = align_token_labels(offsets, owner, 3, [3, 0, 7])
    x = IGNORE_INDEX
    assert labels == [x, 3, x, 0, x, x, x, x, 7, x, x, x]
    assert starts == [1, 3, 8]
    # cut after "rejects": German has no token
    labels, starts = align_token_labels(offsets[:6] + [(0, 0)], owner, 3, [3, 0, 7])
    assert starts == [1, 3, -1] and labels == [x, 3, x, 0, x, x, x]


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_first_subtoken_of_each_word_with_real_tokenizers(family: str) -> None:
    from peftrun.backbones.tiny import tiny_tokenizer

    tokenizer = tiny_tokenizer(family, os.environ["PEFTRUN_CACHE_DIR"])
    words = ["Peter", "Blackburn", "1996-08-22", "."]
    example = Example("x", "", "", (), {"tokens": words, "tag_ids": [1, 2, 0, 0]})
    feature = encode_head_examples([example], tokenizer, "token", 64).features[0]
    pieces = tokenizer.convert_ids_to_tokens(feature.input_ids[0])
    for word, start in zip(words, feature.word_starts, strict=True):
        assert word.startswith(pieces[start].lstrip("Ġ")), (word, pieces[start])
    assert [feature.token_labels[s] for s in feature.word_starts] == [1, 2, 0, 0]
    assert sum(label != IGNORE_INDEX for label in feature.token_labels) == len(words)
    cut = encode_head_examples([example], tokenizer, "token", 4)
    assert cut.truncated == 1 and cut.features[0].word_starts[-1] == -1


# ------------------------------------------------------------------------------------------- candidates


class FirstTokenScorer(torch.nn.Module):
    """A 'model' whose logit for a row is the row's first token id: hand-built candidate scores."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask, **_):
        return SimpleNamespace(logits=input_ids[:, :1].float())


def test_candidate_scoring_picks_the_argmax_candidate() -> None:
    scores, valid = candidate_scores(torch.tensor([[0.1], [2.0], [0.5], [-1.0], [3.0]]), torch.tensor([2, 3]))
    assert valid.tolist() == [[True, True, False], [True, True, True]]
    assert scores[0, 2] == float("-inf") and scores.argmax(-1).tolist() == [1, 2]
    rows = [[[5, 1], [9, 1, 1], [2]], [[7], [3, 1, 1, 1]], [[1], [4], [8], [6]]]  # candidates' first ids = scores
    data = HeadFeatures([HeadFeature(input_ids=r, label=0) for r in rows], 0)
    predicted = predict(FirstTokenScorer(), data, "candidates", pad_token_id=0, batch_size=2)
    assert predicted == [1, 0, 2]
    copa = builtin_task("copa")
    examples = [Example(str(i), "", "", (), {"entities": ["A", "B", "C", "D"]} if i == 2 else {}) for i in range(3)]
    assert label_strings(copa, examples, predicted, "candidates") == ["choice2", "choice1", "C"]


# ------------------------------------------------------------------------------------------- checks


def run_config(**groups) -> object:
    cfg = OmegaConf.structured(RunConfig)
    for group, name in groups.items():
        cfg[group] = OmegaConf.merge(cfg[group], OmegaConf.load(ROOT / "conf" / group / f"{name}.yaml"))
    return cfg


def test_length_check_by_layout() -> None:
    task = OmegaConf.structured(TaskConfig(max_source_length=500, max_target_length=20))
    check_lengths(task, "encoder", "classification", 512, "max_position_embeddings", "b")  # 500 fits
    with pytest.raises(PeftrunError, match=r"max_new_tokens = 500 \+ 64 = 564 .*set task.max_source_length=448"):
        check_lengths(task, "decoder", "text", 512, "n_positions", "b")  # generation's 64 new tokens > 20 target
    with pytest.raises(PeftrunError, match=r"500 \+ 100 = 600 .*set task.max_source_length=412"):
        check_lengths(task, "encoder", "classification", 512, "max_position_embeddings", "b", virtual=100)
    task.generation.max_new_tokens = 600
    with pytest.raises(PeftrunError, match=r"task.generation.max_new_tokens=600 .* in its decoder"):
        check_lengths(task, "encoder-decoder", "text", 512, "max_position_embeddings", "b")
    cfg = run_config(backbone="tiny-t5", method="prompt_tuning", task="xsum")
    cfg.task.max_source_length = 100_000
    assert check_input_lengths(cfg, "encoder-decoder", "text")  # T5: relative positions, no limit
    cfg = run_config(backbone="tiny-bert", method="ptuning_v2", task="rte")
    cfg.task.max_source_length = 400
    with pytest.raises(PeftrunError, match=r"400 \+ 128 = 528"):  # P-tuning v2 shifts BERT's positions by 128
        check_input_lengths(cfg, "encoder", "classification")


def test_formulation_needs_the_head_in_the_family() -> None:
    conll = builtin_task("conll2003", formulation="head")
    bart = OmegaConf.structured(BackboneConfig(name="tiny-bart", family="bart"))
    with pytest.raises(PeftrunError, match=r"token head.*'tiny-bart' \(family bart\).*family bert / gpt2 / llama / t5"):
        resolve_formulation(conll, bart, "encoder-decoder")
    bert = OmegaConf.structured(BackboneConfig(name="tiny-bert", family="bert"))
    assert resolve_formulation(builtin_task("conll2003"), bert, "encoder") == "token"
    assert resolve_formulation(builtin_task("record"), bert, "encoder") == "candidates"
    with pytest.raises(PeftrunError, match="generates text but backbone 'tiny-bert' is an encoder"):
        resolve_formulation(builtin_task("xsum"), bert, "encoder")


def test_saved_head_and_lora_reload_onto_a_fresh_backbone(tmp_path: Path) -> None:
    backbone = tiny_bert("classification", 3)
    method = MethodConfig(name="lora", deltas=[{"kind": "lora", "rank": 2, "alpha": 4.0, "targets": ["q", "v"]}])
    applied = apply_method(backbone.model, backbone.anatomy, method, train_head=True)
    assert {n for n, p in backbone.model.named_parameters() if p.requires_grad and "lora" not in n} == {
        "classifier.weight", "classifier.bias"}
    with torch.no_grad():
        for param in backbone.model.parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param))  # move LoRA B and the classifier away from their init
    ids = torch.tensor([[2, 40, 50, 60, 3]])
    expected = backbone.model(input_ids=ids).logits
    applied.save(tmp_path)
    fresh = tiny_bert("classification", 3)
    load_method(fresh.model, fresh.anatomy, tmp_path)
    torch.testing.assert_close(fresh.model(input_ids=ids).logits, expected)


def test_ptuning_v2_token_head_trains_in_process(tmp_path: Path) -> None:
    """P-tuning v2 (deep prompts, no reparameterisation) + the token head memorise the built-in CoNLL sentences."""
    from peftrun.config import TrainerConfig
    from peftrun.train import training_arguments

    task = builtin_task("conll2003")
    backbone = tiny_bert("token", len(LABELS))
    method = OmegaConf.merge(OmegaConf.structured(RunConfig), {"method": OmegaConf.load(ROOT / "conf" / "method" /
                                                                                       "ptuning_v2.yaml")}).method
    method.length = 4
    applied = apply_method(backbone.model, backbone.anatomy, method, tokenizer=backbone.tokenizer, train_head=True)
    before = {n: p.detach().clone() for n, p in backbone.model.named_parameters()}
    examples = task.load("validation", grouped=True)
    data = encode_head_examples(examples, backbone.tokenizer, "token", 64)
    dataset = HeadDataset(data, "token")
    args = training_arguments(OmegaConf.structured(TrainerConfig(lr=1e-2, max_steps=40, batch_size=4)),
                              str(tmp_path), True)
    trainer = HeadTrainer(model=backbone.model, args=args, train_dataset=dataset,
                          data_collator=HeadCollator(backbone.tokenizer.pad_token_id, "token"),
                          anatomy=backbone.anatomy, label_smoothing=0.0, lengths=dataset.lengths, head="token")
    trainer.train()
    moved = {n for n, p in backbone.model.named_parameters() if not torch.equal(p, before[n])}
    assert moved == {n for n, p in backbone.model.named_parameters() if p.requires_grad}
    assert any("classifier" in n for n in moved) and any("prefix" in n for n in moved)
    assert applied.param_report()["trainable"] == sum(p.numel() for n, p in backbone.model.named_parameters()
                                                      if n in moved)
    predicted = predict(backbone.model, data, "token", backbone.tokenizer.pad_token_id, batch_size=3)
    assert task.score(label_strings(task, examples, predicted, "token"), examples)["f1"] == 100.0
