"""Structured config schemas, registered in Hydra's ConfigStore.

Every key the code reads is a field here (with its default mirrored in a YAML under conf/), so a typo
or a wrong type fails at start-up naming the key. Method knobs (`method.rank`, `method.bottleneck` ...)
sit at the top of `MethodConfig` and are interpolated into the method's `deltas` in each YAML; each
delta item is validated by its delta family's own spec dataclass (see peftrun.methods).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The repository's conf/ (the Makefile installs peftrun editable). Hydra takes it by absolute path: a relative
# config_path would be read as a Python package under an installed console script.
CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")


@dataclass
class PathsConfig:
    data_dir: str = "../shared/data"  # PEFTRUN_DATA_DIR; the shared official files
    cache_dir: str = "~/.cache/peftrun"  # PEFTRUN_CACHE_DIR; tiny tokenizers, tokenized datasets


@dataclass
class BackboneConfig:
    name: str = "tiny-gpt2"
    family: str = "gpt2"  # gpt2 | bart | t5 | bert (roberta = bert family)
    source: str = "tiny"  # hub id, local directory, or "tiny" (built offline from `tiny` below)
    init: str = "pretrained"  # pretrained | random (architecture from `config_path`, random weights)
    config_path: str | None = None  # config.json (or its folder) for init=random
    tokenizer: str | None = None  # tokenizer source when it differs from `source`
    revision: str | None = None  # hub revision, recorded for reproducibility
    dtype: str = "float32"  # float32 | bfloat16 | float16
    tiny: dict[str, Any] = field(default_factory=dict)  # config.json overrides of a tiny backbone


@dataclass
class MethodConfig:
    name: str = "lora"
    train: str = "none"  # backbone params left trainable: none | all | head | bias | top_k
    top_k: int = 0  # with train=top_k: how many of the last layers (per stack) train
    # Knobs people sweep; interpolated into `deltas` by each method YAML. null = unused by this method.
    rank: int | None = None
    alpha: float | None = None
    dropout: float | None = None
    targets: list[str] | None = None
    layers: list[int] | None = None
    bottleneck: int | None = None
    scale: float | None = None
    length: int | None = None
    mid_dim: int | None = None
    init: str | None = None
    deltas: list[Any] = field(default_factory=list)  # [{kind: lora, ...}, ...]


@dataclass
class GenerationConfig:
    num_beams: int = 1
    max_new_tokens: int = 64
    length_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    batch_size: int = 32
    # auto: greedy search (num_beams=1) runs peftrun's lean loop, which drops finished rows and gives generate's
    # tokens (peftrun/decode.py), wherever it applies; hf: always transformers' model.generate
    decoder: str = "auto"


@dataclass
class TaskConfig:
    name: str = "synthetic"
    family: str = "table_to_text"
    data_dir: str | None = None  # official local files; null = the hub (or built-in data)
    hub_id: str | None = None
    train_split: str = "train"
    eval_splits: list[str] = field(default_factory=lambda: ["validation"])
    max_train_examples: int | None = None
    max_eval_examples: int | None = None
    max_source_length: int = 256
    max_target_length: int = 128
    bleu_lowercase: bool = False  # E2E's official BLEU is case-insensitive
    metrics: list[str] | None = None  # metric names to compute (e.g. [bleu, chrf, ter]); null = all of the task's
    formulation: str = "auto"  # auto | text | head: text-to-text, or the task's head (auto: head for encoders)
    verbalizers: list[str] | None = None  # text-to-text target per class (index = label id); null = label names
    with_keys: bool = False  # Spider: also serialise primary and foreign keys in the source
    generation: GenerationConfig = field(default_factory=GenerationConfig)


@dataclass
class TrainerConfig:
    lr: float = 5e-4
    epochs: float = 1.0
    max_steps: int = -1  # >0 overrides epochs
    batch_size: int = 8
    grad_accum: int = 1
    warmup_steps: int = 0
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    label_smoothing: float = 0.0
    max_grad_norm: float = 1.0
    scheduler: str = "linear"
    optimizer: str = "adamw_torch"  # any transformers `optim` name: adamw_torch, adafactor (prompt tuning) ...
    seed: int = 42
    eval_every: int = 0  # steps between evaluations during training; 0 = only at the end
    save_every: int = 0  # steps between checkpoints; 0 = none
    precision: str = "fp32"  # fp32 | bf16 | fp16
    group_by_length: bool = True
    num_workers: int = 0
    threads: int | None = None  # torch compute threads; null = chosen from the usable CPUs (peftrun/threads.py)
    logging_steps: int = 10
    dry_run: bool = False  # build backbone + method, print and record the accounting, train nothing
    do_train: bool = True
    do_eval: bool = True
    resume: bool = False


@dataclass
class LoggerConfig:
    """Experiment tracking on top of results.json / train_log.jsonl (which are always written)."""

    backend: str = "tensorboard"  # tensorboard | wandb | mlflow | none
    project: str = "peftrun"  # W&B project / MLflow experiment name
    offline: bool = True  # W&B offline mode, MLflow file store in the run dir: safe on offline nodes


@dataclass
class RunConfig:
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    run_name: str = "${backbone.name}_${method.name}_${task.name}"


@dataclass
class ScoreConfig:
    """`peftrun-score`: re-score existing predictions without a model."""

    task: TaskConfig = field(default_factory=TaskConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    split: str = "test"
    predictions: str = "???"
    output: str | None = None


def register_configs() -> None:
    """Register the schemas so conf/config.yaml and conf/score.yaml can put them first in defaults."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    store.store(name="run_schema", node=RunConfig)
    store.store(name="score_schema", node=ScoreConfig)
