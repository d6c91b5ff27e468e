"""`load_backbone`: a BackboneConfig -> model + tokenizer + anatomy + a description for the run record.

Sources, in the order they are recognised:
    source == "tiny"         the family's tiny offline backbone (tiny.py), seeded weights, local tokenizer
    init == "random" / meta  architecture from `config_path` (a config.json or its folder; else the source's
                             config), weights drawn from INIT_SEED (or none at all on the meta device)
    an existing directory    from_pretrained(directory)
    anything else            a hub id: from_pretrained(id, revision), after `hub.hub_access` has decided
                             (in ~2 s) between the local cache and the network, or refused with one line.
The tokenizer comes from `tokenizer` if set, else from the source; a model built from a bare config.json
takes the family's offline default (the shared GPT-2 BPE for GPT-2/BART/RoBERTa, the tiny one for T5/BERT).
Config special ids (pad/bos/eos/decoder_start) are made to agree with the tokenizer.
The model is returned in eval mode with `config.use_cache=False` (training) and
`generation_config.use_cache=True` (generation).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peftrun.backbones.anatomy import Anatomy
from peftrun.backbones.families import (
    Family,
    anatomy_of,
    family_of_model_type,
    get_family,
    position_table_of,
    style_name_of,
)
from peftrun.backbones.hub import cached_commit, hf_hub_cache, hub_access, in_hf_cache
from peftrun.backbones.tiny import tiny_config, tiny_tokenizer
from peftrun.backbones.tokenizer import apply_specials, load_tiny_tokenizer, style_for, wrap
from peftrun.errors import PeftrunError, first_line

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

    from peftrun.config import BackboneConfig, PathsConfig

INIT_SEED = 0  # tiny and random-init weights are drawn from torch.manual_seed(INIT_SEED)
DTYPES = ("float32", "bfloat16", "float16")
GPT2_TOKENIZER_DIR = "gpt2-tokenizer"  # under paths.data_dir: vocab.json, merges.txt, tokenizer.json


@dataclass
class Backbone:
    """A loaded backbone.

    family: family name (a module of peftrun/backbones/families/); `spec` is its Family (kinds, heads...).
    kind: the anatomy's kind ("decoder" | "encoder-decoder" | "encoder").
    head: the head it was loaded with ("lm" | "classification" | "token" | "base").
    anatomy: roles re-rooted on this very model (see families.anatomy_of).
    description: JSON-serialisable facts for the run record (source, revision, init, dtype, parameters ...).
    """

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    anatomy: Anatomy
    family: str
    kind: str
    head: str
    description: dict[str, Any] = field(default_factory=dict)

    @property
    def spec(self) -> Family:
        return get_family(self.family)


def load_backbone(
    cfg: BackboneConfig,
    paths: PathsConfig,
    head: str = "lm",
    num_labels: int | None = None,
    meta: bool = False,
) -> Backbone:
    """Build the backbone `cfg` describes with the given head ("lm" | "classification" | "token" | "base").

    meta=True builds the architecture on the meta device without weights (parameter accounting of large
    models within memory); the tokenizer is still real.
    """
    family = get_family(cfg.family)
    auto_name = family.auto_class_name(head)
    dtype = _dtype(cfg)
    from peftrun.validation import check_init

    check_init(cfg)
    if head in ("classification", "token") and num_labels is not None and num_labels < 1:
        raise PeftrunError(f"num_labels must be >= 1 for a {head} head, got {num_labels}")

    if cfg.source == "tiny":
        model, tokenizer, facts = _load_tiny(cfg, paths, family, auto_name, num_labels, meta)
    elif cfg.init == "random" or meta:
        model, tokenizer, facts = _load_from_config(cfg, paths, family, auto_name, num_labels, meta)
    else:
        model, tokenizer, facts = _load_pretrained(cfg, paths, family, auto_name, num_labels)

    model.to(dtype)
    model.config.use_cache = False
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.use_cache = True
    model.eval()
    anatomy = anatomy_of(model, family.name)
    description = {
        "name": cfg.name,
        "family": family.name,
        "model_type": model.config.model_type,
        "class": type(model).__name__,
        "head": head,
        "source": cfg.source,
        "revision": cfg.revision,
        "dtype": cfg.dtype,
        "meta": meta,
        **facts,
        "tokenizer_size": len(tokenizer),
        "vocab_size": model.config.vocab_size,
        "special_token_ids": {k: getattr(tokenizer, f"{k}_token_id") for k in ("pad", "bos", "eos", "unk")},
        "parameters": count_parameters(model),
        "backbone_parameters": count_parameters(model.base_model),
    }
    return Backbone(model, tokenizer, anatomy, family.name, anatomy.kind, head, description)


def count_parameters(module: Any) -> int:
    """Number of distinct parameter elements (tied weights counted once; works on the meta device)."""
    return sum(p.numel() for p in module.parameters())


# ------------------------------------------------------------------------------------------------ sources


def _load_tiny(cfg: BackboneConfig, paths: PathsConfig, family: Family, auto_name: str, num_labels: int | None,
               meta: bool) -> tuple[Any, Any, dict[str, Any]]:
    if cfg.tokenizer is not None:
        raise PeftrunError(f"backbone {cfg.name!r} is tiny and trains its own tokenizer; set backbone.tokenizer=null")
    tokenizer = tiny_tokenizer(family.name, paths.cache_dir)
    config = tiny_config(family.name, tokenizer, dict(cfg.tiny), num_labels)
    model = _build(auto_name, config, meta)
    facts = {"init": "tiny", "seed": INIT_SEED, "tiny_overrides": dict(cfg.tiny),
             "tokenizer": f"tiny byte-level BPE ({tokenizer.name_or_path})"}
    if cfg.init == "corpus" and not meta:
        from peftrun.backbones.tiny_pretrain import RECIPE, load_pretrained_body, pretrained_tiny_state

        lm_config = tiny_config(family.name, tokenizer, dict(cfg.tiny))
        load_pretrained_body(model, pretrained_tiny_state(family.name, family.anatomy.kind, lm_config, tokenizer,
                                                          paths.cache_dir))
        facts.update(init="tiny, pretrained on the built-in corpus", pretrain_recipe=dict(RECIPE))
    return model, tokenizer, facts


def _load_from_config(cfg: BackboneConfig, paths: PathsConfig, family: Family, auto_name: str,
                      num_labels: int | None, meta: bool) -> tuple[Any, Any, dict[str, Any]]:
    config, config_source = _random_init_config(cfg, family)
    tokenizer, tokenizer_source = _random_init_tokenizer(cfg, paths, config)
    if len(tokenizer) > config.vocab_size:
        raise PeftrunError(
            f"backbone {cfg.name!r}: tokenizer {tokenizer_source} has {len(tokenizer)} tokens but the config's "
            f"vocab_size is {config.vocab_size}; set backbone.tokenizer to the model's own tokenizer"
        )
    encoder_decoder = bool(getattr(config, "is_encoder_decoder", False))
    _set_special_ids(config, tokenizer, config.model_type, encoder_decoder, only_missing=False)
    if num_labels is not None:
        config.num_labels = num_labels
    model = _build(auto_name, config, meta)
    facts = {"init": "random", "seed": None if meta else INIT_SEED, "config_path": config_source,
             "tokenizer": tokenizer_source}
    return model, tokenizer, facts


def _load_pretrained(cfg: BackboneConfig, paths: PathsConfig, family: Family, auto_name: str,
                     num_labels: int | None) -> tuple[Any, Any, dict[str, Any]]:
    import transformers

    from peftrun.backbones.checkpoints import resolve_source

    source, checkpoint = resolve_source(cfg, paths, family.auto_class_name("lm"))
    where, kwargs = _locate(source, cfg.revision, cfg.name, family)
    try:
        config = transformers.AutoConfig.from_pretrained(where, **kwargs)
    except (OSError, ValueError) as err:
        raise PeftrunError(f"backbone {cfg.name!r}: no config at {where!r} ({first_line(err)})") from err
    if config.model_type not in family.model_types:  # checked before the weights are read
        raise PeftrunError(
            f"backbone {cfg.name!r}: {where!r} is a {config.model_type!r} model, not family {family.name!r}; "
            f"set backbone.family={family_of_model_type(config.model_type).name}"
        )
    if num_labels is not None:
        config.num_labels = num_labels
    try:
        model = getattr(transformers, auto_name).from_pretrained(where, config=config, dtype=_dtype(cfg), **kwargs)
    except (OSError, ValueError) as err:
        raise PeftrunError(f"backbone {cfg.name!r}: cannot load {where!r} as {auto_name}: {first_line(err)}") from err
    tokenizer_where = cfg.tokenizer or source
    tokenizer = _load_tokenizer(tokenizer_where, cfg.revision if cfg.tokenizer is None else None, cfg.name, family)
    _fill_pad(tokenizer)
    _set_special_ids(model.config, tokenizer, model.config.model_type, model.config.is_encoder_decoder,
                     only_missing=True, generation_config=getattr(model, "generation_config", None))
    local = "local_files_only" not in kwargs
    facts = {
        "init": "pretrained",
        "resolved": str(where),
        "commit": None if local else cached_commit(where, cfg.revision),
        "access": "local directory" if local else ("hf cache" if kwargs["local_files_only"] else "network"),
        "tokenizer": str(tokenizer_where),
        **checkpoint,
    }
    return model, tokenizer, facts


# ------------------------------------------------------------------------------------------------ helpers


def _dtype(cfg: BackboneConfig) -> Any:
    import torch

    if cfg.dtype not in DTYPES:
        raise PeftrunError(f"backbone.dtype={cfg.dtype!r}; allowed: {', '.join(DTYPES)}")
    return getattr(torch, cfg.dtype)


def _is_pathlike(source: str) -> bool:
    return source.startswith(("/", "./", "../", "~")) or os.path.isdir(os.path.expanduser(source))


def _locate(source: str, revision: str | None, name: str, family: Family) -> tuple[str, dict[str, Any]]:
    """(what to pass to from_pretrained, extra kwargs) for a local directory or a hub id."""
    if _is_pathlike(source):
        path = os.path.expanduser(source)
        if not os.path.isdir(path):
            raise PeftrunError(f"backbone {name!r}: backbone.source={source!r} is not a directory")
        return path, {}
    fix = (f"use backbone.source=/path/to/model, backbone=tiny-{family.name}, or backbone.init=random "
           "with backbone.config_path=<config.json>")
    access = hub_access(source, revision, f"backbone {name!r}", fix)
    return source, {"revision": revision, "cache_dir": hf_hub_cache(), "local_files_only": access == "cache"}


def _load_tokenizer(where: str, revision: str | None, name: str, family: Family) -> Any:
    from transformers import AutoTokenizer

    location, kwargs = _locate(where, revision, name, family)
    try:
        return AutoTokenizer.from_pretrained(location, **kwargs)
    except (OSError, ValueError) as err:
        raise PeftrunError(
            f"backbone {name!r}: no tokenizer loadable from {location!r} ({first_line(err)}); "
            "set backbone.tokenizer=<directory or hub id>"
        ) from err


def _fill_pad(tokenizer: Any) -> None:
    """A tokenizer without a pad token pads with eos (GPT-2's convention); collators must then mask labels by
    attention_mask, not by pad id, or the model never learns to emit eos."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise PeftrunError(f"tokenizer {tokenizer.name_or_path!r} has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token


def _set_special_ids(config: Any, tokenizer: Any, model_type: str, encoder_decoder: bool, only_missing: bool,
                     generation_config: Any = None) -> None:
    """Copy the tokenizer's pad/bos/eos (and the decoder start of BART/T5) into the model config."""
    from peftrun.backbones.tokenizer import special_token_ids

    ids = special_token_ids(tokenizer, style_for(model_type), encoder_decoder)
    if getattr(config, "forced_eos_token_id", None) is not None and "eos_token_id" in ids:
        ids["forced_eos_token_id"] = ids["eos_token_id"]
    for key, value in ids.items():
        if only_missing and getattr(config, key, None) is not None:
            continue
        setattr(config, key, value)
        if generation_config is not None:
            setattr(generation_config, key, value)


def _build(auto_name: str, config: PretrainedConfig, meta: bool) -> Any:
    """`Auto<...>.from_config(config)`: weights from INIT_SEED (global RNG untouched), or on the meta device."""
    import torch
    import transformers

    auto_class = getattr(transformers, auto_name)
    try:
        if meta:
            with torch.device("meta"):
                return auto_class.from_config(config, dtype=torch.float32)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(INIT_SEED)
            return auto_class.from_config(config, dtype=torch.float32)
    except ValueError as err:  # e.g. a config this Auto class has no model for
        raise PeftrunError(f"cannot build {auto_name} from a {config.model_type} config: {first_line(err)}") from err


def _random_init_config(cfg: BackboneConfig, family: Family) -> tuple[Any, str]:
    """The architecture for init=random: `config_path` (file or folder), else the source's config."""
    from transformers import CONFIG_MAPPING, AutoConfig

    if cfg.config_path is not None:
        path = Path(os.path.expanduser(cfg.config_path))
        file = path / "config.json" if path.is_dir() else path
        if not file.is_file():
            raise PeftrunError(
                f"backbone {cfg.name!r}: backbone.config_path={cfg.config_path!r} has no config.json "
                "(the published configs live in <paths.data_dir>/configs/<name>/; set PEFTRUN_DATA_DIR)"
            )
        try:
            data = json.loads(file.read_text())
            model_type = data.pop("model_type")
            config = CONFIG_MAPPING[model_type].from_dict(data)
        except (json.JSONDecodeError, KeyError) as err:
            raise PeftrunError(f"backbone {cfg.name!r}: {file} is not a transformers config.json ({err})") from err
        source = str(file)
    else:
        if cfg.source == "tiny":
            raise PeftrunError(f"backbone {cfg.name!r}: init=random needs backbone.config_path")
        where, kwargs = _locate(cfg.source, cfg.revision, cfg.name, family)
        try:
            config = AutoConfig.from_pretrained(where, **kwargs)
        except (OSError, ValueError) as err:
            raise PeftrunError(f"backbone {cfg.name!r}: no config at {where!r} ({first_line(err)})") from err
        source = str(where)
    if config.model_type not in family.model_types:
        raise PeftrunError(
            f"backbone {cfg.name!r}: {source} describes a {config.model_type!r} model, not family "
            f"{family.name!r}; set backbone.family={family_of_model_type(config.model_type).name}"
        )
    return config, source


def _random_init_tokenizer(cfg: BackboneConfig, paths: PathsConfig, config: Any) -> tuple[Any, str]:
    """The tokenizer for a model built from a config: `tokenizer`, else the source's if it is available
    without the network (a local directory or the HF cache), else the family's offline default."""
    family = get_family(cfg.family)
    if cfg.tokenizer is not None:
        tokenizer = _load_tokenizer(cfg.tokenizer, None, cfg.name, family)
        _fill_pad(tokenizer)
        return tokenizer, cfg.tokenizer
    source = cfg.source
    local = _is_pathlike(source) and os.path.isdir(os.path.expanduser(source))
    if source != "tiny" and (local or in_hf_cache(source, cfg.revision, "tokenizer_config.json")):
        tokenizer = _load_tokenizer(source, cfg.revision, cfg.name, family)
        _fill_pad(tokenizer)
        return tokenizer, source
    style = style_name_of(config.model_type)
    if style in ("gpt2", "bart"):  # the byte-level BPE conventions that use GPT-2's vocabulary
        folder = Path(os.path.expanduser(paths.data_dir)) / GPT2_TOKENIZER_DIR
        if (folder / "tokenizer.json").is_file():
            return _gpt2_bpe(folder, config), f"{folder} ({style} special tokens)"
    tokenizer = load_tiny_tokenizer(style, paths.cache_dir)
    return tokenizer, f"tiny-{style} (offline fallback: no {config.model_type} tokenizer here; set backbone.tokenizer)"


def _gpt2_bpe(folder: Path, config: Any) -> Any:
    """The shared GPT-2 byte-level BPE with `config.model_type`'s special tokens.

    GPT-2: as published. BART/RoBERTa: <s> <pad> </s> <unk> take ids 0-3 as in their published vocabularies
    (RoBERTa's position ids are offset by the pad id, so it must stay 1), the GPT-2 tokens follow at 4..50260
    (the published BART/RoBERTa order of ordinary tokens differs: right for random init, not for their weights)
    and <mask> comes last.
    """
    from tokenizers import Tokenizer

    specials = style_for(config.model_type)
    data = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    if style_name_of(config.model_type) == "bart":
        first = [t for t in specials.tokens if t != specials.mask]
        vocab = data["model"]["vocab"]
        data["model"]["vocab"] = {**{t: i for i, t in enumerate(first)},
                                  **{t: i + len(first) for t, i in sorted(vocab.items(), key=lambda kv: kv[1])}}
        data["added_tokens"] = []
    tok = Tokenizer.from_str(json.dumps(data))
    apply_specials(tok, specials)
    table = position_table_of(config.model_type)  # RoBERTa loses 2 rows to its offset
    positions = config.max_position_embeddings - (table.offset if table else 0)
    return wrap(tok, specials, max_length=positions)
