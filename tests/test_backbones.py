"""Backbones: anatomy roles on real transformers modules, tiny models, tokenizers and their cache, loading paths."""

from __future__ import annotations

import math
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn
from transformers.pytorch_utils import Conv1D

from peftrun.backbones import FAMILIES, anatomy_for, get_module, load_backbone, register_family
from peftrun.backbones import hub as hub_module
from peftrun.backbones import tokenizer as tokenizer_module
from peftrun.backbones.families import get_family
from peftrun.config import BackboneConfig, PathsConfig
from peftrun.errors import PeftrunError
from tests.conftest import DATA_DIR, ROOT, require_data

TINY = tuple(sorted(name for name, family in FAMILIES.items() if family.tiny))  # every registered family's
HEADS_OF = {name: tuple(FAMILIES[name].heads) for name in TINY}
# The shared data README's parameter counts (AutoModel, no head): an external reference, not computed here.
README_COUNTS = {
    "gpt2": 124_439_808, "gpt2-medium": 354_823_168, "gpt2-large": 774_030_080, "bart-base": 139_420_416,
    "bart-large": 406_291_456, "t5-small": 60_506_624, "t5-base": 222_903_552, "bert-base-uncased": 109_482_240,
    "bert-large-uncased": 335_141_888, "roberta-base": 124_645_632, "roberta-large": 355_359_744,
}
CONF = ROOT / "conf" / "backbone"
REAL_HUB_REACHABLE = hub_module.hub_reachable


@pytest.fixture
def paths(backbone_paths: PathsConfig) -> PathsConfig:
    """The session's tmp cache (conftest.py; never the user's home) and the shared data dir."""
    return backbone_paths


def tiny(family: str, **overrides: object) -> BackboneConfig:
    return BackboneConfig(name=f"tiny-{family}", family=family, source="tiny", init="random", tiny=dict(overrides))


def in_out(module: nn.Module) -> tuple[int, int]:
    """(in_features, out_features) of a Linear or a GPT-2 Conv1D (whose weight is [in, out])."""
    if isinstance(module, Conv1D):
        return module.weight.shape[0], module.nf
    assert isinstance(module, nn.Linear), type(module)
    return module.in_features, module.out_features


def yaml_config(name: str, data_dir: Path = DATA_DIR) -> BackboneConfig:
    """conf/backbone/<name>.yaml merged into the schema, `${paths.data_dir}` resolved."""
    root = OmegaConf.create({"paths": {"data_dir": str(data_dir), "cache_dir": "unused", "models_dir": "/no/models"}})
    root.backbone = OmegaConf.merge(OmegaConf.structured(BackboneConfig), OmegaConf.load(CONF / f"{name}.yaml"))
    return OmegaConf.to_object(root.backbone)


# ------------------------------------------------------------------------------------------- families


def test_anatomy_for_needs_no_model_and_no_transformers() -> None:
    code = ("import sys; from peftrun.backbones import anatomy_for; "
            "print(anatomy_for('t5').kind, 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.stdout.split() == ["encoder-decoder", "False"], out.stderr
    assert {f: anatomy_for(f).kind for f in ("gpt2", "bart", "t5", "bert", "llama")} == {
        "gpt2": "decoder", "bart": "encoder-decoder", "t5": "encoder-decoder", "bert": "encoder", "llama": "decoder"}
    with pytest.raises(PeftrunError, match=r"unknown backbone family 'opt'; known: bart, bert, gpt2, llama, t5"):
        anatomy_for("opt")


def test_registration_refuses_duplicates_and_kinds_gate_use() -> None:
    gpt2 = FAMILIES["gpt2"]
    with pytest.raises(ValueError, match="registered twice"):
        register_family(gpt2.anatomy, base_prefix="transformer", heads=gpt2.heads, model_types=("gpt2",),
                        shape=gpt2.shape)
    assert FAMILIES["bert"].kinds == {"masked_lm", "classification", "token"}
    assert FAMILIES["bart"].kinds == {"seq2seq_lm", "classification"}
    with pytest.raises(PeftrunError, match=r"'bert' cannot be used as seq2seq_lm.*bart / t5"):
        FAMILIES["bert"].require("seq2seq_lm")
    FAMILIES["t5"].require("seq2seq_lm")


@pytest.mark.parametrize(("family", "head"), [(f, h) for f in TINY for h in HEADS_OF[f]])
def test_roles_resolve_to_projections_of_the_right_shape(paths: PathsConfig, family: str, head: str) -> None:
    num_labels = 3 if head in ("classification", "token") else None
    backbone = load_backbone(tiny(family), paths, head=head, num_labels=num_labels)
    model, anatomy = backbone.model, backbone.anatomy
    shape = FAMILIES[family].shape(model.config)
    expected_stacks = ["encoder"] if (family, head) == ("t5", "token") else list(shape.stacks)
    assert [s.name for s in anatomy.stacks] == expected_stacks
    assert get_module(model, anatomy.input_embeddings) is model.get_input_embeddings()
    assert (anatomy.lm_head is not None) == (head == "lm")
    if head != "base":
        assert anatomy.heads and all(get_module(model, h) is not None for h in anatomy.heads)
    hidden = shape.hidden
    fired: set[str] = set()
    hooks = []
    for stack in anatomy.stacks:
        dims = shape.stacks[stack.name]
        layers = anatomy.layers(model, stack.name)
        assert len(layers) == dims.layers
        inner = dims.heads * dims.head_dim
        kv_inner = dims.kv_heads * dims.head_dim  # narrower than inner with grouped-query attention (llama)
        for index, layer in enumerate(layers):
            roles = {"ffn_in": stack.ffn_in, "ffn_out": stack.ffn_out}
            if stack.ffn_gate is not None:
                roles["ffn_gate"] = stack.ffn_gate
                assert in_out(get_module(layer, stack.ffn_gate)) == (hidden, dims.ffn)
            assert in_out(get_module(layer, stack.ffn_in)) == (hidden, dims.ffn)
            assert in_out(get_module(layer, stack.ffn_out)) == (dims.ffn, hidden)
            kinds = [a.kind for a in stack.attentions]
            assert kinds == (["self", "cross"] if stack.name == "decoder" and anatomy.is_encoder_decoder else ["self"])
            for attention in stack.attentions:
                module = get_module(layer, attention.module)
                if attention.qkv is not None:
                    assert family == "gpt2" and anatomy.conv1d_projections
                    assert in_out(get_module(layer, attention.qkv)) == (hidden, 3 * hidden)
                    projections = {"qkv": attention.qkv}
                else:
                    projections = {"q": attention.q, "k": attention.k, "v": attention.v}
                    assert in_out(get_module(layer, attention.q)) == (hidden, inner)
                    assert in_out(get_module(layer, attention.k)) == (hidden, kv_inner)
                    assert in_out(get_module(layer, attention.v)) == (hidden, kv_inner)
                assert in_out(get_module(layer, attention.o)) == (inner, hidden)
                inside = {id(m) for m in module.modules()}
                assert all(id(get_module(layer, p)) in inside for p in projections.values())
                roles.update({f"{attention.kind}.{r}": p for r, p in {**projections, "o": attention.o,
                                                                         "module": attention.module}.items()})
            for role, path in roles.items():
                key = f"{stack.name}.{index}.{role}"
                hooks.append(get_module(layer, path).register_forward_hook(lambda *_, k=key: fired.add(k)))
                fired.discard(key)
    def roles_of(s):  # noqa: ANN001, ANN202
        ffn = ["ffn_in", "ffn_out"] + (["ffn_gate"] if s.ffn_gate else [])
        return ffn + [f"{a.kind}.{x}" for a in s.attentions
                      for x in (["qkv"] if a.qkv else ["q", "k", "v"]) + ["o", "module"]]

    expected = {f"{s.name}.{i}.{r}" for s in anatomy.stacks for i in range(len(anatomy.layers(model, s.name)))
                for r in roles_of(s)}
    batch = backbone.tokenizer(["name[The Eagle], food[French]", "a pub"], padding=True, return_tensors="pt")
    if anatomy.is_encoder_decoder and head in ("lm", "base"):  # classification heads shift input_ids themselves
        batch["decoder_input_ids"] = torch.full((2, 3), model.config.decoder_start_token_id)
    with torch.no_grad():
        model(**batch)
    for hook in hooks:
        hook.remove()
    assert fired == expected  # every role is a module the forward pass actually runs through


def test_roberta_shares_the_bert_entry_with_its_own_prefix(paths: PathsConfig) -> None:
    require_data("configs", "roberta-base")
    cfg = BackboneConfig(name="roberta-base", family="bert", source="FacebookAI/roberta-base", init="random",
                         config_path=str(DATA_DIR / "configs" / "roberta-base"))
    backbone = load_backbone(cfg, paths, head="classification", num_labels=2, meta=True)
    assert backbone.anatomy.stacks[0].layers == "roberta.encoder.layer"
    assert backbone.anatomy.input_embeddings == "roberta.embeddings.word_embeddings"
    assert backbone.anatomy.heads == ("classifier",)
    masked = load_backbone(cfg, paths, head="lm", meta=True)
    assert masked.anatomy.lm_head == "lm_head.decoder"


# ------------------------------------------------------------------------------------------- tiny models


@pytest.mark.parametrize("family", TINY)
def test_tiny_models_are_deterministic_and_consistent_with_their_tokenizer(paths: PathsConfig, family: str) -> None:
    torch.manual_seed(123)
    before = torch.rand(3)
    first = load_backbone(tiny(family), paths)
    second = load_backbone(tiny(family), paths)
    torch.manual_seed(123)
    assert torch.equal(torch.rand(3), before)  # building does not consume the caller's random stream
    a, b = first.model.state_dict(), second.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    config, tok = first.model.config, first.tokenizer
    assert 1000 <= len(tok) <= 2000 and config.vocab_size == len(tok)
    assert config.pad_token_id == tok.pad_token_id is not None
    assert config.eos_token_id == tok.eos_token_id
    assert first.model.get_input_embeddings().weight.shape == (len(tok), 64)
    assert first.description["parameters"] == sum(p.numel() for p in first.model.parameters())
    if FAMILIES[family].lm_kind != "masked_lm":  # an untrained LM predicts ~uniformly: loss ~ ln(vocab)
        batch = tok(["name[The Eagle], eatType[pub]"], return_tensors="pt")
        batch["labels"] = (tok(["The Eagle is a pub."], return_tensors="pt").input_ids
                           if first.anatomy.is_encoder_decoder else batch["input_ids"])
        with torch.no_grad():
            loss = first.model(**batch).loss.item()
        assert abs(loss - math.log(len(tok))) < 1.0, loss


def test_tiny_special_ids_follow_each_family(paths: PathsConfig) -> None:
    for family in TINY:
        backbone = load_backbone(tiny(family), paths)
        tok = backbone.tokenizer
        text = "The Eagle"
        plain = tok(text, add_special_tokens=False).input_ids
        with_specials = tok(text).input_ids
        if family == "gpt2":
            assert tok.convert_ids_to_tokens([tok.eos_token_id, tok.bos_token_id, tok.pad_token_id]) == [
                "<|endoftext|>"] * 3
            assert with_specials == plain
        elif family == "bart":
            assert [tok.bos_token_id, tok.pad_token_id, tok.eos_token_id, tok.unk_token_id] == [0, 1, 2, 3]
            assert tok.mask_token == "<mask>"
            assert with_specials == [0, *plain, 2]
            assert backbone.model.config.decoder_start_token_id == 2
        elif family == "t5":
            assert [tok.pad_token_id, tok.eos_token_id, tok.unk_token_id] == [0, 1, 2]
            assert with_specials == [*plain, 1]
            assert backbone.model.config.decoder_start_token_id == 0
        elif family == "llama":
            assert tok.convert_ids_to_tokens([0, 1, 2]) == ["<unk>", "<s>", "</s>"]
            assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (1, 2, 2)
            assert with_specials == plain
        else:
            assert tok.convert_ids_to_tokens([0, 1, 2, 3, 4]) == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
            assert with_specials == [2, *plain, 3]
            pair = tok("a b", "c")
            assert pair.input_ids[0] == 2 and pair.input_ids.count(3) == 2
            assert pair.token_type_ids == [0] * (pair.input_ids.index(3) + 1) + [1] * (
                len(pair.input_ids) - pair.input_ids.index(3) - 1)


def test_tiny_overrides_and_dtype(paths: PathsConfig) -> None:
    backbone = load_backbone(tiny("gpt2", n_layer=3), paths)
    assert len(backbone.anatomy.layers(backbone.model, "decoder")) == 3
    half = load_backbone(BackboneConfig(name="tiny-t5", family="t5", source="tiny", dtype="bfloat16"), paths)
    assert {p.dtype for p in half.model.parameters()} == {torch.bfloat16}
    with pytest.raises(PeftrunError, match=r"backbone.tiny.n_layers: GPT2Config has no such key"):
        load_backbone(tiny("gpt2", n_layers=3), paths)
    with pytest.raises(PeftrunError, match="vocab_size is set by the tiny tokenizer"):
        load_backbone(tiny("bart", vocab_size=50), paths)
    with pytest.raises(PeftrunError, match="backbone.dtype='float8'; allowed: float32, bfloat16, float16"):
        load_backbone(BackboneConfig(dtype="float8"), paths)
    with pytest.raises(PeftrunError, match="family 'bart' has no 'token' head"):
        load_backbone(tiny("bart"), paths, head="token")


# ------------------------------------------------------------------------------------------- tokenizers


def test_tokenizer_is_trained_once_cached_atomically_and_round_trips(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    first = load_backbone(tiny("gpt2"), PathsConfig(cache_dir=str(cache))).tokenizer
    entries = list((cache / "tokenizers").iterdir())
    assert [e.name[: len("tiny-gpt2-")] for e in entries] == ["tiny-gpt2-"]  # no temp dir left behind
    assert len(entries[0].name) == len("tiny-gpt2-") + 12 and (entries[0] / "tokenizer.json").is_file()

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("trained again instead of reading the cache")

    monkeypatch.setattr(tokenizer_module, "train_tiny_tokenizer", no_training)
    second = load_backbone(tiny("gpt2"), PathsConfig(cache_dir=str(cache))).tokenizer
    assert second.get_vocab() == first.get_vocab()
    for text in ["name[The Eagle], eatType[coffee shop], priceRange[£20-25]",
                 "Zürich's naïve café served 3½ crêpes — 😀 ok?", "  leading spaces\tand\nnewlines "]:
        ids = second(text).input_ids
        assert ids == first(text).input_ids
        assert second.decode(ids, skip_special_tokens=True) == text
    # the corpus' register compresses: an E2E-style MR costs well under one token per 3 characters
    mr = "name[The Mill], eatType[pub], food[Italian], area[riverside], near[Café Rouge]"
    assert len(first(mr).input_ids) < len(mr) / 3


def test_tilde_in_cache_dir_is_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    load_backbone(tiny("t5"), PathsConfig(cache_dir="~/peftrun-cache"))
    assert list((tmp_path / "peftrun-cache" / "tokenizers").glob("tiny-t5-*/tokenizer.json"))


# ------------------------------------------------------------------------------------------- loading paths


def test_local_directory_and_hf_cache_sources(paths: PathsConfig, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    reference = load_backbone(tiny("bart"), paths, head="classification", num_labels=2)
    local = tmp_path / "bart-local"
    reference.model.save_pretrained(local)
    reference.tokenizer.save_pretrained(local)
    loaded = load_backbone(BackboneConfig(name="mine", family="bart", source=str(local)), paths,
                           head="classification", num_labels=2)
    a, b = reference.model.state_dict(), loaded.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert loaded.description["access"] == "local directory" and loaded.anatomy == reference.anatomy

    # The same files laid out as a Hugging Face cache snapshot load offline from a hub id.
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hf" / "hub" / "models--someone--tiny-bart"
    reference.model.save_pretrained(repo / "snapshots" / commit)
    reference.tokenizer.save_pretrained(repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub = load_backbone(BackboneConfig(name="hub", family="bart", source="someone/tiny-bart"), paths,
                        head="classification", num_labels=2)
    assert hub.description["access"] == "hf cache" and hub.description["commit"] == commit
    assert all(torch.equal(a[k], hub.model.state_dict()[k]) for k in a)
    with pytest.raises(PeftrunError, match=r"'someone/tiny-bart' is a 'bart' model, not family 'gpt2'.*family=bart"):
        load_backbone(BackboneConfig(name="hub", family="gpt2", source="someone/tiny-bart"), paths)


def test_uncached_hub_id_offline_fails_fast_in_one_line(paths: PathsConfig, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(PeftrunError) as err:
        load_backbone(yaml_config("gpt2-medium"), paths)
    assert time.perf_counter() - start < 3.0
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("backbone 'gpt2-medium': 'openai-community/gpt2-medium' is not in the local Hugging "
                              f"Face cache ({tmp_path / 'empty-hf' / 'hub'})")
    assert "HF_HUB_OFFLINE is set" in message and "backbone=tiny-gpt2" in message and "backbone.init=random" in message


def test_hub_access_decision(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(hub_module, "hub_reachable", lambda: None)
    assert hub_module.hub_access("org/model", None, "what", "fix") == "network"
    monkeypatch.setattr(hub_module, "hub_reachable", lambda: "huggingface.co:443: Name or service not known")
    with pytest.raises(PeftrunError, match=r"^what: 'org/model'@v1 is not in .* unreachable \(huggingface.co:443: "
                                           r"Name or service not known\); fix$"):
        hub_module.hub_access("org/model", "v1", "what", "fix")
    # an endpoint that cannot answer gives a reason within the timeout (a closed local port)
    monkeypatch.setenv("HF_ENDPOINT", "https://127.0.0.1:9")
    start = time.perf_counter()
    reason = REAL_HUB_REACHABLE(0.3)
    assert reason is not None and reason.startswith("127.0.0.1:9: ") and time.perf_counter() - start < 1.5


# ------------------------------------------------------------------------------------------- published configs


@pytest.mark.parametrize("name", sorted(README_COUNTS))
def test_published_configs_on_meta_give_the_readme_counts(paths: PathsConfig, name: str) -> None:
    require_data("configs", name, "config.json")
    cfg = yaml_config(name)
    cfg.init = "random"
    backbone = load_backbone(cfg, paths, head="base", meta=True)
    assert backbone.description["parameters"] == README_COUNTS[name]
    assert next(backbone.model.parameters()).device.type == "meta"
    family = get_family(cfg.family)
    shape = family.shape(backbone.model.config)
    for stack in backbone.anatomy.stacks:  # roles resolve on the real architecture, with its real widths
        layers = backbone.anatomy.layers(backbone.model, stack.name)
        assert len(layers) == shape.stacks[stack.name].layers
        assert in_out(get_module(layers[-1], stack.ffn_in)) == (shape.hidden, shape.stacks[stack.name].ffn)
    assert len(backbone.tokenizer) <= backbone.model.config.vocab_size


def test_random_init_roberta_uses_the_gpt2_bpe_with_bart_special_ids(paths: PathsConfig) -> None:
    folder = require_data("gpt2-tokenizer")
    from tokenizers import Tokenizer

    gpt2 = Tokenizer.from_file(str(folder / "tokenizer.json"))
    cfg = yaml_config("roberta-base")
    cfg.init = "random"
    backbone = load_backbone(cfg, paths, head="classification", num_labels=2, meta=True)
    tok = backbone.tokenizer
    text = "Hello world, this is RoBERTa."
    assert tok(text).input_ids == [0, *[i + 4 for i in gpt2.encode(text).ids], 2]
    assert (tok.pad_token_id, backbone.model.config.pad_token_id) == (1, 1)  # RoBERTa offsets positions by pad
    assert tok.mask_token_id == len(tok) - 1


def test_every_backbone_yaml_matches_the_schema_and_its_name(paths: PathsConfig) -> None:
    names = sorted(p.stem for p in CONF.glob("*.yaml"))
    assert set(names) >= {f"tiny-{f}" for f in TINY} | set(README_COUNTS)
    for name in names:
        text = (CONF / f"{name}.yaml").read_text()
        assert text.startswith(f"# peftrun backbone={name} "), name
        cfg = yaml_config(name)
        assert cfg.name == name and cfg.family in FAMILIES
        if cfg.source == "tiny":
            expected = "tiny, pretrained on the built-in corpus" if cfg.init == "corpus" else "tiny"
            assert load_backbone(cfg, paths).description["init"] == expected
        else:
            assert cfg.config_path == str(DATA_DIR / "configs" / name) and cfg.tokenizer is None
            for local in (cfg.gguf_file, cfg.local_dir):  # local checkpoints live under paths.models_dir
                assert local is None or local.startswith("/no/models/"), name


def test_random_init_errors_name_the_fix(paths: PathsConfig, tmp_path: Path) -> None:
    with pytest.raises(PeftrunError, match=r"backbone.config_path='/nowhere' has no config.json"):
        load_backbone(BackboneConfig(name="x", family="gpt2", source="gpt2", init="random", config_path="/nowhere"),
                      paths)
    require_data("configs", "bart-base")
    with pytest.raises(PeftrunError, match=r"describes a 'bart' model, not family 'gpt2'; set backbone.family=bart"):
        load_backbone(BackboneConfig(name="x", family="gpt2", source="gpt2", init="random",
                                     config_path=str(DATA_DIR / "configs" / "bart-base")), paths, meta=True)
    with pytest.raises(PeftrunError, match=r"backbone.source='/no/such/model' is not a directory"):
        load_backbone(BackboneConfig(name="x", family="gpt2", source="/no/such/model"), paths)


# ------------------------------------------------------------------------------------------- checkpoint sources


@pytest.mark.parametrize("name", ["smollm2-135m-instruct", "minilm-l6"])
def test_missing_real_checkpoint_fails_fast_naming_the_options(paths: PathsConfig, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(PeftrunError) as err:
        load_backbone(yaml_config(name), paths)
    assert time.perf_counter() - start < 3.0
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"backbone {name!r}: no ")
    assert "/no/models/" in message and "not in the local Hugging Face cache" in message
    for option in ("backbone.source=/path/to/model", "backbone.gguf_file=", "hub id"):
        assert option in message
    assert "fetch-real-models" not in message


def test_local_dir_is_tried_before_the_hub_id(paths: PathsConfig, tmp_path: Path) -> None:
    reference = load_backbone(tiny("llama"), paths)
    local = tmp_path / "llama-local"
    reference.model.save_pretrained(local)
    reference.tokenizer.save_pretrained(local)
    cfg = BackboneConfig(name="mine", family="llama", source="nobody/nothing", local_dir=str(local))
    loaded = load_backbone(cfg, paths)
    assert loaded.description["local_dir"] == str(local) and loaded.description["access"] == "local directory"
    a, b = reference.model.state_dict(), loaded.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
