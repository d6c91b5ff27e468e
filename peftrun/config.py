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
    models_dir: str = "~/.cache/peftrun/models"  # PEFTRUN_MODELS_DIR; local checkpoints (GGUF files, model dirs)


@dataclass
class BackboneConfig:
    name: str = "tiny-gpt2"
    family: str = "gpt2"  # gpt2 | bart | t5 | bert (roberta = bert family)
    source: str = "tiny"  # hub id, local directory, or "tiny" (built offline from `tiny` below)
    init: str = "pretrained"  # pretrained | random (architecture from `config_path`, random weights) | corpus (tiny)
    config_path: str | None = None  # config.json (or its folder) for init=random
    tokenizer: str | None = None  # tokenizer source when it differs from `source`
    revision: str | None = None  # hub revision, recorded for reproducibility
    gguf_file: str | None = None  # a local .gguf file tried first (dequantised to `dtype`, cached)
    local_dir: str | None = None  # a local save_pretrained directory tried before `source`
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
    # a run directory (or its adapter/) whose saved prompt starts this method's prompt (prompt transfer,
    # multi-task P-tuning v2's per-task continuation; peftrun/instruction/transfer.py); null = fresh
    init_from: str | None = None
    # training examples also get the prompt group's retrieved demonstrations (instruction prompt tuning, method=ipt;
    # peftrun/instruction/ipt.py); needs a prompt with k >= 1
    train_with_demonstrations: bool = False
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


OPTION = {"task_option": True}  # a TaskConfig key read by some tasks only (Task.options); others refuse it


@dataclass
class MixtureConfig:
    """task=mixture (peftrun/tasks/mixture.py): several tasks trained together, evaluated per task."""

    train: list[str] = field(default_factory=list)  # member tasks trained on (conf/task/<name>.yaml each)
    eval: list[str] = field(default_factory=list)  # member tasks evaluated (their task.eval_splits)
    max_per_task: int | None = 3000  # training examples kept per task (FLAN: 3,000); null = all
    temperature: float = 1.0  # p_i ~ n_i^(1/T) over the capped sizes n_i: 1 = proportional, large = uniform
    homogeneous: bool = False  # each global batch from one task (automatic with per-task heads)
    templates: str = "none"  # none | flan: render every member through its instruction templates
    template_eval: str = "all"  # flan: evaluate each template separately (all) or round-robin like training
    eval_shots: int = 0  # k-shot held-out evaluation: k of the member's own training examples, same template
    seed: int = 0  # the templates' round-robin order (the YAML sets ${trainer.seed})
    # refuse train/eval tasks sharing a source dataset or a FLAN (neighbour) cluster (cluster), a source (source)
    check_leakage: str = "cluster"  # cluster | source | off
    tasks: dict[str, Any] = field(default_factory=dict)  # per-member task overrides, e.g. {rte: {data_dir: DIR}}


@dataclass
class TaskConfig:
    """Keys every task reads, plus task options (metadata OPTION) read by the tasks that declare them in
    `Task.options`: a task YAML writes the common keys and its own options; build_task refuses a foreign one set."""

    name: str = "synthetic"
    data_dir: str | None = None  # official local files; null = the hub (or built-in data)
    hub_id: str | None = field(default=None, metadata=OPTION)  # "ID" or "ID:CONFIG" when data_dir is null
    train_split: str = "train"
    eval_splits: list[str] = field(default_factory=lambda: ["validation"])
    max_train_examples: int | None = None
    max_eval_examples: int | None = None
    max_source_length: int = 256
    max_target_length: int = 128
    bleu_lowercase: bool = field(default=False, metadata=OPTION)  # table-to-text: E2E's official BLEU is case-insensitive
    metrics: list[str] | None = None  # metric names to compute (e.g. [bleu, chrf, ter]); null = all of the task's
    formulation: str = "auto"  # auto | text | head: text-to-text, or the task's head (auto: head for encoders)
    # SuperGLUE: text-to-text target per class (index = label id); null = label names
    verbalizers: list[str] | None = field(default=None, metadata=OPTION)
    with_keys: bool = field(default=False, metadata=OPTION)  # Spider: also serialise primary and foreign keys
    mixture: MixtureConfig = field(default_factory=MixtureConfig)  # task=mixture only
    generation: GenerationConfig = field(default_factory=GenerationConfig)


@dataclass
class PromptConfig:
    """Prompt construction (peftrun/prompting/): template, instruction, demonstrations. prompt=none (null): the
    task's own source and target, unchanged."""

    source: str = "plain"  # plain | flan | promptsource | superni (template files under paths.data_dir/instructions)
    template: str = "0"  # template id (flan: "0".."9", promptsource: its name), or "round_robin" over the ids by example
    instruction: str = ""  # text put before everything (demonstrations included); "" = none
    options_inline: bool = False  # plain source: list the answer options after the query ("OPTIONS:\n- ...")
    k: int = 0  # demonstrations per query, from the train split (task.train_split)
    retriever: str = "random"  # random | bm25 | dense (sentence encoder, `encoder`) | fixed (`fixed_ids`)
    encoder: str = "~/.cache/peftrun/models/minilm-l6"  # dense retriever: a sentence encoder dir (mean pooling)
    fixed_ids: list[str] = field(default_factory=list)  # retriever=fixed: train example ids, in this order
    order: str = "similar_last"  # similar_last | similar_first | random
    pool: int | None = None  # demonstrations are drawn from the first `pool` train examples; null = all
    max_tokens: int | None = None  # prompt token budget; over it, the least similar demonstration is dropped
    answer_separator: str = " "  # between a prompt and its answer (demonstrations and the scored options)
    example_separator: str = "\n\n"  # between demonstrations and before the query
    seed: int = 0  # random retriever / random order / round robin start
    normalize: str = "sum"  # task.formulation=rank: option score = sum | mean of its token log-likelihoods
    calibrate: bool = False  # task.formulation=rank: contextual calibration with a content-free ("N/A") query


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
    eval_every: int = 0  # steps between evaluations on select_split during training; 0 = only at the end
    select_split: str = "validation"  # the split evaluated every eval_every steps (the papers select on dev)
    select_metric: str | None = None  # with eval_every: the metric that picks the checkpoint evaluated at the end
    select_mode: str = "max"  # max | min: whether a higher or a lower select_metric is better
    save_every: int = 0  # steps between checkpoints; 0 = none
    precision: str = "auto"  # auto (bf16 where measured faster at equal quality, else fp32) | fp32 | bf16 | fp16
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
    prompt: PromptConfig | None = None  # prompt=none: null, and left out of the record (records unchanged)
    run_name: str = "${backbone.name}_${method.name}_${task.name}"


@dataclass
class ScoreConfig:
    """`peftrun-score`: re-score existing predictions without a model."""

    task: TaskConfig = field(default_factory=TaskConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    split: str = "test"
    predictions: str = "???"
    output: str | None = None
    normalize: str | None = None  # rank runs' predictions.jsonl: re-decide each row by sum | mean (null = as saved)
    calibrate: bool | None = None  # ... with / without contextual calibration (null = as saved)


def register_configs() -> None:
    """Register the schemas so conf/config.yaml and conf/score.yaml can put them first in defaults."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    store.store(name="run_schema", node=RunConfig)
    store.store(name="score_schema", node=ScoreConfig)
