"""Training internals: target-only loss equals the model's own loss; only delta parameters move;
batched left-padded generation equals one-at-a-time generation."""

from __future__ import annotations

import os

import pytest
import torch
from omegaconf import OmegaConf

from peftrun.backbones import load_backbone
from peftrun.config import BackboneConfig, GenerationConfig, MethodConfig, PathsConfig, TrainerConfig
from peftrun.data import IGNORE_INDEX, PaddingCollator, TokenizedDataset, tokenize_examples
from peftrun.generate import generate_ids
from peftrun.methods import apply_method
from peftrun.tasks.base import Example
from peftrun.train import PeftrunTrainer, target_only_loss, training_arguments

EXAMPLES = [
    Example(id=str(i), source=src, target=tgt, references=(tgt,))
    for i, (src, tgt) in enumerate([
        ("name : Aromi | Type : coffee shop", "Aromi is a coffee shop."),
        ("name : The Eagle | food : French | area : riverside | priceRange : high", "The Eagle serves French food."),
        ("name : Zizzi", "Zizzi."),
        ("name : Cotto | near : The Bakers | familyFriendly : yes", "Cotto, near The Bakers, is family friendly here."),
    ])
]


def tiny(family: str):
    cfg = OmegaConf.structured(BackboneConfig(name=f"tiny-{family}", family=family, source="tiny"))
    return load_backbone(cfg, OmegaConf.structured(PathsConfig(cache_dir=os.environ["PEFTRUN_CACHE_DIR"])))


def collate(backbone, examples=EXAMPLES):
    kind = backbone.anatomy.kind
    tok = tokenize_examples(examples, backbone.tokenizer, kind, 64, 64, None)
    collator = PaddingCollator(backbone.tokenizer.pad_token_id, kind,
                               getattr(backbone.model.config, "decoder_start_token_id", None))
    return collator([TokenizedDataset(tok, kind)[i] for i in range(len(tok))])


@pytest.mark.parametrize("family", ["gpt2", "bart", "t5"])
def test_target_only_loss_equals_the_models_own_loss(family: str) -> None:
    backbone = tiny(family)
    backbone.model.eval()
    batch = collate(backbone)
    labels = batch["labels"]
    if family == "gpt2":  # labels align with the input: padding never trains
        assert (labels[batch["attention_mask"] == 0] == IGNORE_INDEX).all()
    with torch.no_grad():
        loss_sum, count = target_only_loss(backbone.model, backbone.anatomy, batch)
        reference = backbone.model(**batch).loss  # transformers' mean over label positions
    expected_count = int((labels[:, 1:] != IGNORE_INDEX).sum()) if family == "gpt2" else int((labels != -100).sum())
    assert count == expected_count
    torch.testing.assert_close(loss_sum / count, reference, rtol=1e-5, atol=1e-5)


def test_decoder_layout_masks_source_and_padding() -> None:
    backbone = tiny("gpt2")
    batch = collate(backbone)
    tok = backbone.tokenizer
    for row, ex in enumerate(EXAMPLES):
        n_src = len(tok(ex.source, add_special_tokens=False)["input_ids"]) + 1  # + separator EOS
        n_tgt = len(tok(ex.target, add_special_tokens=False)["input_ids"]) + 1  # + closing EOS
        labels = batch["labels"][row]
        assert (labels[:n_src] == IGNORE_INDEX).all()
        assert (labels[n_src:n_src + n_tgt] != IGNORE_INDEX).all()
        assert (labels[n_src + n_tgt:] == IGNORE_INDEX).all()
        assert int(batch["attention_mask"][row].sum()) == n_src + n_tgt


@pytest.mark.parametrize("family", ["gpt2", "bart"])
def test_training_moves_only_lora_parameters(tmp_path, family: str) -> None:
    backbone = tiny(family)
    method_cfg = OmegaConf.structured(MethodConfig(name="lora", deltas=[{"kind": "lora", "rank": 2, "alpha": 4.0,
                                                                         "targets": ["q", "v"]}]))
    applied = apply_method(backbone.model, backbone.anatomy, method_cfg)
    before = {n: p.detach().clone() for n, p in backbone.model.named_parameters()}
    kind = backbone.anatomy.kind
    tok = tokenize_examples(EXAMPLES * 4, backbone.tokenizer, kind, 64, 64, None)
    dataset = TokenizedDataset(tok, kind)
    tcfg = OmegaConf.structured(TrainerConfig(lr=1e-2, max_steps=4, batch_size=4, logging_steps=1))
    trainer = PeftrunTrainer(
        model=backbone.model, args=training_arguments(tcfg, str(tmp_path), True), train_dataset=dataset,
        data_collator=PaddingCollator(backbone.tokenizer.pad_token_id, kind,
                                      getattr(backbone.model.config, "decoder_start_token_id", None)),
        anatomy=backbone.anatomy, label_smoothing=0.0, lengths=dataset.lengths,
    )
    trainer.train()
    trainable = {n for n, p in backbone.model.named_parameters() if p.requires_grad}
    assert trainable and applied.param_report()["trainable"] == sum(
        p.numel() for n, p in backbone.model.named_parameters() if n in trainable)
    moved = {n for n, p in backbone.model.named_parameters() if not torch.equal(p, before[n])}
    assert moved and moved <= trainable
    assert any("lora_B" in n for n in moved)  # B left zero would mean no learning at all


@pytest.mark.parametrize("family", ["gpt2", "bart", "t5"])
def test_batched_generation_equals_one_at_a_time(family: str) -> None:
    backbone = tiny(family)
    kind = backbone.anatomy.kind
    prompts = tokenize_examples(EXAMPLES, backbone.tokenizer, kind, 64, 64, None, with_target=False).input_ids
    gen = OmegaConf.structured(GenerationConfig(max_new_tokens=6, batch_size=4))
    # random tiny models may end at once; min_new_tokens keeps the comparison about real continuations
    extra = {"min_new_tokens": 4, "suppress_tokens": [backbone.tokenizer.pad_token_id]}
    batched = generate_ids(backbone.model, backbone.tokenizer, kind, prompts, gen, **extra)
    single = [generate_ids(backbone.model, backbone.tokenizer, kind, [p], gen, **extra)[0] for p in prompts]
    assert batched == single
    assert sum(len(ids) for ids in batched) > 2 * len(batched)  # real continuations, not lone EOS
