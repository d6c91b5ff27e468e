"""Rank classification with a real GGUF decoder (SmolLM2-135M-Instruct) loaded directly by transformers.

Measurement only (numbers are printed, nothing is asserted). Once the llama backbone family is in peftrun, the
same runs are `peftrun backbone=smollm2-135m-instruct method=icl task.formulation=rank prompt=...`. Each argument
is one set of Hydra overrides; every run uses prompt.calibrate=true, so the four decision rules (sum / mean
log-likelihood, with / without contextual calibration) are re-decided from the same scores (formulations.rank.rechoose).

    PYTHONPATH=. python scripts/measure_icl_rank.py --examples 50 "prompt=flan prompt.k=0" \
        "prompt=flan prompt.k=4 prompt.retriever=random" "prompt=flan prompt.k=4 prompt.retriever=bm25"
"""

from __future__ import annotations

import argparse
import json
import os
import time
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import torch
from hydra import compose, initialize_config_dir
from transformers import AutoModelForCausalLM, AutoTokenizer

from peftrun.config import CONF_DIR, register_configs
from peftrun.formulations import Prompting, build_formulation
from peftrun.formulations.options import rechoose
from peftrun.prompting.build import PromptBuilder
from peftrun.tasks.base import build_task


@contextmanager
def _quiet(split: str, total: int):
    yield lambda n: None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="Hydra overrides of one run, space-separated, in quotes")
    parser.add_argument("--model", default="~/.cache/peftrun/models/smollm2-135m-instruct")
    parser.add_argument("--gguf", default="SmolLM2-135M-Instruct.Q4_1.gguf")
    parser.add_argument("--task", default="rte")
    parser.add_argument("--data", default=os.path.join(os.environ.get("PEFTRUN_DATA_DIR", "../shared/data"),
                                                       "superglue", "full", "RTE"))
    parser.add_argument("--examples", type=int, default=50)
    args = parser.parse_args()
    register_configs()
    folder = str(Path(args.model).expanduser())
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=args.gguf)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=args.gguf, dtype=torch.float32).eval()
    backbone = SimpleNamespace(model=model, tokenizer=tokenizer, kind="decoder")
    for run in args.runs:
        overrides = ["method=icl", f"task={args.task}", f"task.data_dir={Path(args.data).resolve()}",
                     "task.formulation=rank", "task.max_source_length=2048", *run.split(), "prompt.calibrate=true"]
        with initialize_config_dir(CONF_DIR, version_base=None):
            cfg = compose("config", overrides=overrides)
        task = build_task(cfg.task, cfg.paths.data_dir)
        examples = task.load("validation", grouped=True)[: args.examples]
        builder = PromptBuilder(cfg.prompt, task, cfg.paths.data_dir)
        pool = builder.pool(task.load(cfg.task.train_split, grouped=False)) if cfg.prompt.k else []
        formulation = build_formulation("rank", cfg, task, Prompting(builder, pool, natural=True))
        record: dict = {"data": {}}
        started = time.perf_counter()
        _, extras = formulation.predict(backbone, examples, "validation", record, _quiet)
        accuracy = {f"{norm}{'+calibrated' if cal else ''}":
                    task.score([rechoose(e, norm, cal) for e in extras], examples)["accuracy"]
                    for norm in ("sum", "mean") for cal in (False, True)}
        print(json.dumps({"run": run, "accuracy": accuracy, **record["data"]["validation"],
                          "seconds": round(time.perf_counter() - started, 1)}), flush=True)


if __name__ == "__main__":
    main()
