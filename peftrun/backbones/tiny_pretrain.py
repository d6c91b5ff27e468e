"""A tiny decoder that knows something: pretrained once on the built-in corpus, cached (`backbone.init=corpus`).

A randomly initialised tiny model adapted by LoRA learns next to nothing (the default run scored BLEU 0.03), which
is not what LoRA is for: it adapts a model that already knows the language. So the default backbone
(`tiny-gpt2-pretrained`) is the tiny GPT-2 trained as a causal LM on `corpus.corpus_documents()` (prose, E2E-style
meaning representations with their descriptions in another format than the synthetic task's, triples, SQL),
documents separated by EOS, for RECIPE["steps"] steps. Deterministic (seeded sampling of 64-token blocks, one
thread); the weights are cached as safetensors under `<cache_dir>/tiny-pretrained/<key>/` keyed by the config,
the tokenizer files, the corpus and the recipe, so every later run loads them in milliseconds. Concurrent first
runs (test workers, a sweep) wait on a file lock instead of training twice.

Decoder families only (a causal LM objective); heads other than the LM head start from the pretrained body.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

from peftrun.backbones.corpus import corpus_documents
from peftrun.errors import PeftrunError
from peftrun.io import atomic_write

log = logging.getLogger("peftrun")
RECIPE = {"steps": 600, "batch": 32, "block": 64, "lr": 3e-3, "warmup": 0.1, "seed": 0}
WEIGHTS = "model.safetensors"


def pretrained_tiny_state(family: str, kind: str, config: Any, tokenizer: Any, cache_dir: str) -> dict[str, Any]:
    """The state dict of the tiny causal LM `config` pretrained on the built-in corpus (trained now if not cached)."""
    if kind != "decoder":
        raise PeftrunError(f"backbone.init=corpus on a tiny {family} backbone: only decoder families are "
                           "pretrained offline (a causal LM on the built-in corpus); use backbone.init=random, or "
                           "backbone=tiny-gpt2-pretrained")
    from safetensors.torch import load_file

    folder = Path(cache_dir).expanduser() / "tiny-pretrained" / cache_key(config, tokenizer)
    weights = folder / WEIGHTS
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a concurrent first run trains; the others wait and then load
        if weights.exists():
            try:
                return load_file(str(weights))
            except (OSError, ValueError, RuntimeError) as err:
                log.warning("pretrained tiny weights %s unreadable (%s); training them again", weights, err)
        started = time.perf_counter()
        log.info("pretraining the tiny %s once on the built-in corpus (%d steps); cached in %s", family,
                 RECIPE["steps"], folder)
        state = _pretrain(config, tokenizer)
        atomic_write(weights, lambda tmp: _save(state, tmp))
        atomic_write(folder / "recipe.json", lambda tmp: Path(tmp).write_text(json.dumps(
            {"recipe": RECIPE, "seconds": round(time.perf_counter() - started, 1)}, indent=2)))
        return state


def cache_key(config: Any, tokenizer: Any) -> str:
    """Content hash of what the weights depend on: architecture, tokenizer, corpus, recipe, this module's version."""
    parts = {
        "config": config.to_json_string(use_diff=False),
        "vocab": hashlib.sha256(json.dumps(tokenizer.get_vocab(), sort_keys=True).encode()).hexdigest(),
        "eos": tokenizer.eos_token,
        "corpus": hashlib.sha256("\x00".join(corpus_documents()).encode()).hexdigest(),
        "recipe": RECIPE,
        "version": 2,  # 2: documents tokenised one by one
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def _pretrain(config: Any, tokenizer: Any) -> dict[str, Any]:
    import torch
    import transformers

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # hidden 64: one thread is fastest (peftrun/threads.py)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RECIPE["seed"])
            model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
            eos = tokenizer.eos_token_id
            ids = [i for doc in tokenizer(corpus_documents(), add_special_tokens=False)["input_ids"] for i in
                   [*doc, eos]]
            block = RECIPE["block"]
            blocks = torch.tensor(ids[: len(ids) // block * block]).view(-1, block)
            optimizer = torch.optim.AdamW(model.parameters(), lr=RECIPE["lr"], weight_decay=0.0)
            schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, RECIPE["lr"], total_steps=RECIPE["steps"],
                                                           pct_start=RECIPE["warmup"])
            sampler = torch.Generator().manual_seed(RECIPE["seed"])
            model.train()
            for _ in range(RECIPE["steps"]):
                batch = blocks[torch.randint(len(blocks), (RECIPE["batch"],), generator=sampler)]
                loss = model(input_ids=batch, labels=batch).loss
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                schedule.step()
                optimizer.zero_grad(set_to_none=True)
            log.info("tiny pretraining: final loss %.3f", loss.item())
    finally:
        torch.set_num_threads(threads)
    return {name: tensor.detach().clone().contiguous() for name, tensor in model.state_dict().items()}


def _save(state: dict[str, Any], path: str) -> None:
    from safetensors.torch import save_file

    # _pretrain cloned every tensor, so tied weights (GPT-2's LM head is its input embedding) no longer share
    # storage, which safetensors refuses; each is stored under its own name
    save_file(state, path, metadata={"format": "pt"})


def load_pretrained_body(model: Any, state: dict[str, Any]) -> None:
    """Load the pretrained causal LM's weights into `model` (the LM model itself, or the same body under another
    head): every parameter but a new head's must come from `state`."""
    own = model.state_dict()
    prefix = model.base_model_prefix
    matched = {}
    for name, tensor in state.items():
        body = name.removeprefix(f"{prefix}.")
        target = name if name in own else f"{prefix}.{body}" if f"{prefix}.{body}" in own else body
        if target in own and own[target].shape == tensor.shape:
            matched[target] = tensor
    result = model.load_state_dict(matched, strict=False)
    body_missing = [name for name in result.missing_keys if name.startswith(f"{prefix}.")
                    and not name.endswith(("attn.bias", "attn.masked_bias"))]
    if body_missing:
        raise PeftrunError(f"pretrained tiny weights do not cover {body_missing[0]}; delete the tiny-pretrained "
                           "cache folder and rerun")
    with contextlib.suppress(AttributeError):
        model.tie_weights()
