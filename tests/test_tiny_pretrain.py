"""The default backbone: tiny GPT-2 pretrained once on the built-in corpus, cached; LoRA on it learns visibly."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from peftrun.backbones import load_backbone
from peftrun.backbones.tiny_pretrain import WEIGHTS
from peftrun.config import BackboneConfig, PathsConfig
from tests.test_cli import peftrun, read_json


def _load(init: str):
    cfg = OmegaConf.structured(BackboneConfig(name="tiny-gpt2-pretrained", family="gpt2", source="tiny", init=init))
    return load_backbone(cfg, OmegaConf.structured(PathsConfig(cache_dir=os.environ["PEFTRUN_CACHE_DIR"])))


def _corpus_loss(backbone) -> float:
    tok = backbone.tokenizer
    batch = tok(["name[Aromi], eatType[pub], food[Italian], priceRange[cheap], customer rating[high], area[riverside], "
                 "familyFriendly[yes], near[Burger King]\nAromi is a pub that serves Italian food in the cheap price "
                 "range. It is family friendly."], return_tensors="pt")
    with torch.no_grad():
        return float(backbone.model(**batch, labels=batch.input_ids).loss)


def test_pretrained_once_cached_and_it_knows_the_corpus() -> None:
    pretrained, again, random = _load("corpus"), _load("corpus"), _load("random")
    folders = list((Path(os.environ["PEFTRUN_CACHE_DIR"]) / "tiny-pretrained").glob(f"*/{WEIGHTS}"))
    assert folders and all((folder.parent / "recipe.json").is_file() for folder in folders)
    for (name, a), b in zip(pretrained.model.state_dict().items(), again.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name  # the cached weights are the weights
    assert pretrained.model.lm_head.weight.data_ptr() == pretrained.model.transformer.wte.weight.data_ptr()  # tied
    assert pretrained.description["init"] == "tiny, pretrained on the built-in corpus"
    assert _corpus_loss(pretrained) < 0.5 * _corpus_loss(random)


def test_the_default_lora_run_learns_and_names_the_real_checkpoint_command(tmp_path: Path) -> None:
    bleu = {}
    for backbone in ("tiny-gpt2-pretrained", "tiny-gpt2"):
        run_dir = tmp_path / backbone
        proc = peftrun(f"backbone={backbone}", "trainer.max_steps=150", "task.max_eval_examples=30", "logger=none",
                       f"hydra.run.dir={run_dir}")
        assert proc.returncode == 0, proc.stderr[-3000:]
        bleu[backbone] = read_json(run_dir / "results.json")["metrics"]["validation"]["bleu"]
        assert "the same on a real checkpoint: peftrun backbone=smollm2-135m-instruct method=lora task=synthetic" \
            in " ".join(proc.stdout.split())  # rich wraps the line at the terminal width
    assert bleu["tiny-gpt2-pretrained"] > bleu["tiny-gpt2"] + 10, bleu


@pytest.mark.parametrize(("overrides", "named"), [
    (["backbone=gpt2", "backbone.init=corpus"], "backbone.init=corpus pretrains a tiny backbone"),
    (["backbone.init=pretrain"], "backbone.init='pretrain'"),
])
def test_bad_init_is_one_line(tmp_path: Path, overrides: list[str], named: str) -> None:
    proc = peftrun(*overrides, "logger=none", f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 2 and named in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]
