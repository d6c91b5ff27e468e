"""Benchmark: peftrun vs a competently configured peft + Trainer script, side by side in one process.

Same model (random-init GPT-2 from the published config, real GPT-2 tokenizer), same E2E data, same LoRA
(rank 4 on the fused c_attn, as peft targets it), same steps, batch size and generation settings.
The baseline is what a careful user writes: length-grouped sampler, dynamic padding with
DataCollatorForSeq2Seq, labels -100 on the prompt, batched left-padded generation sorted by length.

    python scripts/bench_train.py [--backbone gpt2] [--steps 30] [--eval 64] [--batch 8] [--repeats 3]

Prints median wall times over alternating repeats and the ratio peftrun / baseline (goal: <= 0.7).
Not a test: numbers vary by machine (on the shared 2-core VM, single runs vary by 10-20%).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("PEFTRUN_DATA_DIR", ROOT.parent / "shared" / "data"))


def load_e2e(n_train: int, n_eval: int):
    from omegaconf import OmegaConf

    from peftrun.config import TaskConfig
    from peftrun.tasks.base import build_task

    cfg = OmegaConf.structured(TaskConfig(name="e2e", data_dir=str(DATA / "e2e")))
    task = build_task(cfg, str(DATA))
    return task.load("train", grouped=False)[:n_train], task.load("validation", grouped=True)[:n_eval]


def build_model(name: str):
    from omegaconf import OmegaConf

    from peftrun.backbones import load_backbone
    from peftrun.config import BackboneConfig, PathsConfig

    cfg = OmegaConf.structured(BackboneConfig(name=name, family="gpt2", source=name, init="random",
                                              config_path=str(DATA / "configs" / name)))
    torch.manual_seed(0)
    return load_backbone(cfg, OmegaConf.structured(PathsConfig(data_dir=str(DATA))))


def run_baseline(name, train, evals, args, out_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    backbone = build_model(name)
    tok, model = backbone.tokenizer, backbone.model
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=32, target_modules=["c_attn"], fan_in_fan_out=True,
                                             lora_dropout=0.0, task_type="CAUSAL_LM"))
    rows = []
    for ex in train:
        src = tok(ex.source)["input_ids"] + [tok.eos_token_id]
        tgt = tok(ex.target)["input_ids"] + [tok.eos_token_id]
        rows.append({"input_ids": src + tgt, "attention_mask": [1] * (len(src) + len(tgt)),
                     "labels": [-100] * len(src) + tgt})
    from datasets import Dataset

    dataset = Dataset.from_list(rows)
    targs = TrainingArguments(output_dir=str(out_dir / "baseline"), max_steps=args.steps,
                              per_device_train_batch_size=args.batch, learning_rate=2e-4, report_to="none",
                              disable_tqdm=True, save_strategy="no", logging_steps=10,
                              train_sampling_strategy="group_by_length", use_cpu=True, seed=0)
    trainer = Trainer(model=model, args=targs, train_dataset=dataset,
                      data_collator=DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100))
    t0 = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t0
    tok.padding_side = "left"
    prompts = [ex.source + tok.eos_token for ex in evals]
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    t0 = time.perf_counter()
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(order), args.eval_batch):
            batch = tok([prompts[i] for i in order[start:start + args.eval_batch]], return_tensors="pt", padding=True)
            model.generate(**batch, max_new_tokens=args.new_tokens, num_beams=args.beams, do_sample=False,
                           pad_token_id=tok.pad_token_id)
    eval_s = time.perf_counter() - t0
    return {"train_s": train_s, "eval_s": eval_s}


def run_peftrun(name, train, evals, args, out_dir):
    from omegaconf import OmegaConf

    from peftrun.backbones import anatomy_for
    from peftrun.config import GenerationConfig, MethodConfig, TrainerConfig
    from peftrun.data import PaddingCollator, TokenizedDataset, tokenize_examples
    from peftrun.generate import generate_texts
    from peftrun.methods import apply_method
    from peftrun.train import PeftrunTrainer, training_arguments

    backbone = build_model(name)
    anatomy = anatomy_for("gpt2")
    method = OmegaConf.structured(MethodConfig(name="lora", deltas=[
        {"kind": "lora", "rank": 4, "alpha": 32, "dropout": 0.0, "targets": ["qkv"]}]))
    applied = apply_method(backbone.model, anatomy, method)
    tcfg = OmegaConf.structured(TrainerConfig(lr=2e-4, max_steps=args.steps, batch_size=args.batch, seed=0,
                                              logging_steps=10))
    tok = tokenize_examples(train, backbone.tokenizer, "decoder", 512, 512, None)
    dataset = TokenizedDataset(tok, "decoder")
    trainer = PeftrunTrainer(model=backbone.model, args=training_arguments(tcfg, str(out_dir / "peftrun"), True),
                             train_dataset=dataset, data_collator=PaddingCollator(backbone.tokenizer.pad_token_id,
                                                                                  "decoder"),
                             anatomy=anatomy, label_smoothing=0.0, lengths=dataset.lengths)
    t0 = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t0
    applied.merge()  # as the runner does before evaluation: merged LoRA adds no latency
    prompts = tokenize_examples(evals, backbone.tokenizer, "decoder", 512, 512, None, with_target=False)
    gen = OmegaConf.structured(GenerationConfig(num_beams=args.beams, max_new_tokens=args.new_tokens,
                                                batch_size=args.eval_batch))
    t0 = time.perf_counter()
    generate_texts(backbone.model, backbone.tokenizer, "decoder", prompts.input_ids, gen)
    eval_s = time.perf_counter() - t0
    return {"train_s": train_s, "eval_s": eval_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="gpt2")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--eval", type=int, default=64)
    parser.add_argument("--eval-batch", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--beams", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs of each; medians are reported")
    parser.add_argument("--out", default="bench_results")
    args = parser.parse_args()
    if not (DATA / "e2e").exists():
        raise SystemExit(f"{DATA / 'e2e'} not found: set PEFTRUN_DATA_DIR to the shared public data")
    out_dir = Path(args.out)
    train, evals = load_e2e(args.steps * args.batch, args.eval)
    torch.set_num_threads(os.cpu_count() or 1)
    runs: dict[str, list[dict[str, float]]] = {"baseline": [], "peftrun": []}
    order = (("baseline", run_baseline), ("peftrun", run_peftrun))
    for repeat in range(args.repeats):  # alternate which goes first: machine noise hits both alike
        for label, fn in order if repeat % 2 == 0 else order[::-1]:
            runs[label].append(fn(args.backbone, train, evals, args, out_dir))
            print(label, {k: round(v, 2) for k, v in runs[label][-1].items()}, flush=True)
    results = {label: {key: statistics.median(r[key] for r in rs) for key in ("train_s", "eval_s")}
               for label, rs in runs.items()}
    for key in ("train_s", "eval_s"):
        results[f"ratio_{key}"] = results["peftrun"][key] / results["baseline"][key]
    total = {k: v["train_s"] + v["eval_s"] for k, v in results.items() if isinstance(v, dict)}
    results["ratio_total"] = total["peftrun"] / total["baseline"]
    results["runs"] = runs
    print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in results.items() if k != "runs"},
                     indent=2))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "bench_train.json").write_text(json.dumps({"args": vars(args), **results}, indent=2))


if __name__ == "__main__":
    main()
