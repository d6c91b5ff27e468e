"""Value checks of a composed run config: every number and name the run will use, before any expensive work.

Reads only the config (and the backbone's config.json for widths); imports neither torch nor transformers, so a
bad value fails in well under a second with one `PeftrunError` line naming the key, the value, what is allowed
and the fix. Types and unknown keys inside the schema are Hydra's (peftrun/config.py); this module adds what a
type cannot say (ranges, names, combinations) and keys added with `+key=` that no schema field reads.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from peftrun.config import RunConfig
from peftrun.errors import PeftrunError
from peftrun.precision import PRECISIONS  # torch-free at import

# transformers' SchedulerType values (tests/test_faults.py checks this list against transformers)
SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
              "inverse_sqrt", "reduce_lr_on_plateau", "cosine_with_min_lr", "cosine_warmup_with_min_lr",
              "warmup_stable_decay")
DECODERS = ("auto", "hf")
SELECT_MODES = ("max", "min")
# Virtual tokens (prompt / prefix length) beyond this allocate absurd memory for no published setting: the papers
# use 1-300 (Lester et al. up to 150, Li & Liang up to 300).
MAX_VIRTUAL_TOKENS = 4096
WIDTH_KEYS = ("n_embd", "d_model", "hidden_size")  # the model width in config.json, by family


def validate_config(cfg: DictConfig) -> None:
    """Raise one PeftrunError line for the first value the run cannot honour (see module docstring)."""
    check_known_keys(cfg)
    check_init(cfg.backbone)
    check_trainer(cfg.trainer)
    check_task(cfg.task)
    check_generation(cfg.task.generation)
    check_method_values(cfg)


INITS = ("pretrained", "random", "corpus")


def check_init(cfg: Any) -> None:
    """backbone.init is known; `corpus` (pretrained offline on the built-in corpus) is for tiny backbones only."""
    if cfg.init not in INITS:
        raise PeftrunError(f"backbone.init={cfg.init!r}; allowed: {', '.join(INITS)}")
    if cfg.init == "corpus" and cfg.source != "tiny":
        raise PeftrunError(f"backbone.init=corpus pretrains a tiny backbone offline; backbone {cfg.name!r} has "
                           f"source {cfg.source!r}: use backbone.init=pretrained or random")


def check_group_choices(choices: dict[str, str | None], conf_dir: str | Path) -> None:
    """Every config group option chosen on the command line exists (an optional group silently skips a typo)."""
    for group, choice in choices.items():
        if group.startswith("hydra/") or choice is None:
            continue
        folder = Path(conf_dir) / group
        if not (folder / f"{choice}.yaml").exists():
            known = sorted(p.stem for p in folder.glob("*.yaml"))
            raise PeftrunError(f"{group}={choice}: no such config in {folder}; known: {', '.join(known)}")


def check_known_keys(cfg: DictConfig) -> None:
    """Keys added with `+key=value` that no schema field reads would be ignored silently: refuse them."""
    unknown = _unknown_keys(OmegaConf.to_container(cfg, resolve=False), RunConfig, "")
    if unknown:
        raise PeftrunError(f"unknown config key {unknown[0]!r} (nothing reads it); remove the +{unknown[0]}= "
                           "override (peftrun/config.py lists every key)")


def _unknown_keys(node: dict[str, Any], schema: type, prefix: str) -> list[str]:
    fields = {f.name: f for f in dataclasses.fields(schema)}
    unknown = []
    for key, value in node.items():
        if key not in fields:
            unknown.append(f"{prefix}{key}")
            continue
        sub = _dataclass_of(fields[key])
        if sub is not None and isinstance(value, dict):
            unknown += _unknown_keys(value, sub, f"{prefix}{key}.")
    return unknown


def _dataclass_of(field: dataclasses.Field) -> type | None:
    default = field.default_factory() if field.default_factory is not dataclasses.MISSING else None
    return type(default) if dataclasses.is_dataclass(default) else None


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _require(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise PeftrunError(f"{key}={value!r} is not allowed: {allowed}; set {key} to such a value")


def check_trainer(t: Any) -> None:
    _require(_finite(t.lr) and t.lr >= 0, "trainer.lr", t.lr, "a finite number >= 0 (0 keeps the initial weights)")
    _require(t.batch_size >= 1, "trainer.batch_size", t.batch_size, "an integer >= 1")
    _require(t.grad_accum >= 1, "trainer.grad_accum", t.grad_accum, "an integer >= 1")
    _require(t.logging_steps >= 1, "trainer.logging_steps", t.logging_steps, "an integer >= 1")
    if t.max_steps == 0:
        raise PeftrunError("trainer.max_steps=0 would train nothing: for evaluation without training set "
                           "trainer.do_train=false; else a step count > 0, or -1 to train trainer.epochs epochs")
    _require(t.max_steps >= -1, "trainer.max_steps", t.max_steps, "an integer > 0, or -1 (train trainer.epochs)")
    if t.max_steps == -1:
        _require(_finite(t.epochs) and t.epochs > 0, "trainer.epochs", t.epochs, "a finite number > 0")
    _require(t.warmup_steps >= 0, "trainer.warmup_steps", t.warmup_steps, "an integer >= 0")
    _require(_finite(t.warmup_ratio) and 0 <= t.warmup_ratio < 1, "trainer.warmup_ratio", t.warmup_ratio,
             "a number in [0, 1)")
    _require(_finite(t.weight_decay) and t.weight_decay >= 0, "trainer.weight_decay", t.weight_decay,
             "a finite number >= 0")
    _require(_finite(t.label_smoothing) and 0 <= t.label_smoothing < 1, "trainer.label_smoothing",
             t.label_smoothing, "a number in [0, 1)")
    _require(_finite(t.max_grad_norm) and t.max_grad_norm >= 0, "trainer.max_grad_norm", t.max_grad_norm,
             "a finite number >= 0 (0 = no clipping)")
    _require(t.scheduler in SCHEDULERS, "trainer.scheduler", t.scheduler, f"one of {', '.join(SCHEDULERS)}")
    _require(t.precision in PRECISIONS, "trainer.precision", t.precision, f"one of {', '.join(PRECISIONS)}")
    _require(t.save_every >= 0, "trainer.save_every", t.save_every, "an integer >= 0 (0 = no checkpoints)")
    _require(t.eval_every >= 0, "trainer.eval_every", t.eval_every, "an integer >= 0 (0 = evaluate at the end)")
    _require(t.num_workers >= 0, "trainer.num_workers", t.num_workers, "an integer >= 0")
    _require(t.select_mode in SELECT_MODES, "trainer.select_mode", t.select_mode, f"one of {', '.join(SELECT_MODES)}")
    if t.eval_every > 0 and not t.select_metric:
        raise PeftrunError("trainer.eval_every > 0 selects the best checkpoint on a validation metric: set "
                           "trainer.select_metric (e.g. bleu, accuracy) and trainer.select_mode (max | min)")


def check_task(task: Any) -> None:
    for key in ("max_train_examples", "max_eval_examples"):
        value = task[key]
        _require(value is None or value >= 1, f"task.{key}", value, "an integer >= 1, or null for all")
    _require(task.max_source_length >= 1, "task.max_source_length", task.max_source_length, "an integer >= 1")
    _require(task.max_target_length >= 1, "task.max_target_length", task.max_target_length, "an integer >= 1")
    if task.metrics is not None:
        _require(len(task.metrics) > 0, "task.metrics", list(task.metrics), "a non-empty list, or null for all")
    if task.name != "mixture":  # task.mixture.* is read by task=mixture only: anything set there would be ignored
        from peftrun.config import MixtureConfig

        default = dataclasses.asdict(MixtureConfig())
        given = OmegaConf.to_container(task.mixture, resolve=True)
        changed = sorted(k for k in default if given.get(k) != default[k])
        if changed:
            raise PeftrunError(f"task.mixture.{changed[0]} is set but task={task.name}: task.mixture.* configures "
                               "task=mixture only; add task=mixture (members in task.mixture.train / .eval) or drop "
                               "it")


def check_generation(g: Any) -> None:
    key = "task.generation"
    _require(g.num_beams >= 1, f"{key}.num_beams", g.num_beams, "an integer >= 1")
    _require(g.batch_size >= 1, f"{key}.batch_size", g.batch_size, "an integer >= 1")
    _require(g.max_new_tokens >= 1, f"{key}.max_new_tokens", g.max_new_tokens, "an integer >= 1")
    _require(g.no_repeat_ngram_size >= 0, f"{key}.no_repeat_ngram_size", g.no_repeat_ngram_size, "an integer >= 0")
    _require(_finite(g.length_penalty), f"{key}.length_penalty", g.length_penalty, "a finite number")
    _require(g.decoder in DECODERS, f"{key}.decoder", g.decoder, f"one of {', '.join(DECODERS)}")


# delta spec keys whose value sizes a tensor (must be >= 1) or multiplies the delta (0 = a no-op delta)
SIZE_KEYS = ("rank", "bottleneck", "length", "mid_dim")
FACTOR_KEYS = ("alpha", "scale")


def check_method_values(cfg: DictConfig) -> None:
    """Sizes and factors of every delta item (after interpolation), against the backbone's width when known."""
    from peftrun.lengths import architecture_config

    method = OmegaConf.to_container(cfg.method, resolve=True)
    width = _width(architecture_config(cfg.backbone))
    for item in method.get("deltas") or []:
        if not isinstance(item, dict):
            continue  # validate_method names a malformed item
        where = f"method {method.get('name')!r} delta {item.get('name') or item.get('kind')!r}"
        for key in SIZE_KEYS:
            value = item.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value < 1:
                raise PeftrunError(f"{where}: {key}={value} must be >= 1 (set method.{key})")
        for key in FACTOR_KEYS:
            value = item.get(key)
            if value is not None and (not _finite(value) or value == 0):
                raise PeftrunError(f"{where}: {key}={value} makes the delta a no-op or undefined; set method.{key} "
                                   "to a finite non-zero number")
        rank = item.get("rank")
        if width is not None and isinstance(rank, int) and rank > width:
            raise PeftrunError(f"{where}: rank={rank} exceeds the backbone width {width} (a rank-{width} update is "
                               f"already full rank); set method.rank <= {width}")
        length = item.get("length")
        if isinstance(length, int) and length > MAX_VIRTUAL_TOKENS:
            raise PeftrunError(f"{where}: length={length} virtual tokens (at most {MAX_VIRTUAL_TOKENS}; the papers "
                               "use 1-300); set method.length lower")


def _width(config: dict[str, Any] | None) -> int | None:
    if not config:
        return None
    for key in WIDTH_KEYS:
        if isinstance(config.get(key), int):
            return config[key]
    return None
