"""Baseline for scripts/bench_e2e.py: the E2E experiment written the way a careful user writes it with peft + Trainer.

Standalone (imports no peftrun): reads the official E2E csv files, linearises MRs like peftrun's e2e task
(`name : X | Type : pub`), trains LoRA or prefix-tuning with peft and the transformers Trainer, generates for
the first N validation MRs and scores BLEU (case-insensitive, 13a) and chrF with sacrebleu, as peftrun does.

A competent configuration, everything the documentation recommends for speed:
- sdpa attention; length-grouped sampler (`train_sampling_strategy="group_by_length"`); dynamic padding
  (DataCollatorForSeq2Seq); target-only labels (-100 on the source and its EOS separator); fused AdamW
  (`adamw_torch_fused`; torch's fused CPU kernel);
- evaluation: LoRA merged into the weights (`merge_and_unload`), prompts sorted by length, batched, left-padded,
  `model.generate` with the KV cache; torch threads = the usable CPUs (affinity).

    python scripts/baseline_peft_trainer.py --model gpt2 --method lora --steps 20 --batch 8 --eval 32 --out DIR

Writes DIR/results.json (metrics, timings) and DIR/predictions.jsonl.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import time
from pathlib import Path

DATA = Path(os.environ.get("PEFTRUN_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))
MODELS = Path(os.environ.get("PEFTRUN_CACHE_DIR", "~/.cache/peftrun")).expanduser() / "models"
NAMES = {"eatType": "Type", "priceRange": "price", "familyFriendly": "family friendly"}
ATTRIBUTE = re.compile(r"\s*([^\[\],]+?)\s*\[([^\[\]]*)\]\s*(?:,|$)")


def linearise(mr: str) -> str:
    return " | ".join(f"{NAMES.get(k, k)} : {v.strip()}" for k, v in ATTRIBUTE.findall(mr.strip()))


def read_rows(name: str) -> list[tuple[str, str]]:
    with open(DATA / "e2e" / name, newline="", encoding="utf-8") as handle:
        return [(row["mr"], row["ref"].strip()) for row in csv.DictReader(handle) if row["mr"] and row["ref"]]


def load_model(name: str):
    """(model, tokenizer): GPT-2 from the published config (random init, seed 0) or SmolLM2-135M-Instruct."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if name == "gpt2":
        config = AutoConfig.from_pretrained(DATA / "configs" / "gpt2", attn_implementation="sdpa")
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
        tokenizer = AutoTokenizer.from_pretrained(DATA / "gpt2-tokenizer")  # vocab + merges only: name GPT-2's EOS
        tokenizer.eos_token = tokenizer.bos_token = "<|endoftext|>"
    elif name == "smollm2-135m-instruct":
        folder, gguf = MODELS / "smollm2-135m-instruct", "SmolLM2-135M-Instruct.Q4_1.gguf"
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, attn_implementation="sdpa",
                                                     dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
        # from_pretrained(gguf_file=) dequantises to float32 but keeps the GGUF quantizer attached, and the Trainer
        # refuses to train a "GGUF-quantized" model: the weights are plain float32 tensors, so detach it
        model.hf_quantizer = None
        model.is_quantized = False
        model.config.__dict__.pop("quantization_config", None)
    else:
        raise SystemExit(f"--model {name}: gpt2 | smollm2-135m-instruct")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def peft_config(method: str, model_name: str):
    from peft import LoraConfig, PrefixTuningConfig

    if method == "lora":  # GPT-2: the fused c_attn (peftrun method.targets=[qkv]); llama: q_proj, v_proj
        gpt2 = model_name == "gpt2"
        return LoraConfig(r=4, lora_alpha=32, lora_dropout=0.1, task_type="CAUSAL_LM", fan_in_fan_out=gpt2,
                          target_modules=["c_attn"] if gpt2 else ["q_proj", "v_proj"])
    if method == "prefix":  # Li & Liang: P=10, reparameterisation MLP of width 512
        return PrefixTuningConfig(num_virtual_tokens=10, prefix_projection=True, encoder_hidden_size=512,
                                  task_type="CAUSAL_LM")
    raise SystemExit(f"--method {method}: lora | prefix")


def main() -> None:
    started = time.perf_counter()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gpt2")
    parser.add_argument("--method", default="lora")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--train", type=int, default=None, help="training (MR, ref) pairs; default steps x batch")
    parser.add_argument("--eval", type=int, default=32, help="validation MRs")
    parser.add_argument("--eval-batch", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--beams", type=int, default=1)
    parser.add_argument("--max-source", type=int, default=64)
    parser.add_argument("--max-target", type=int, default=96)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    import sacrebleu
    import torch
    from datasets import Dataset
    from peft import get_peft_model
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    model, tok = load_model(args.model)
    model = get_peft_model(model, peft_config(args.method, args.model))
    eos = tok.eos_token_id
    rows = read_rows("trainset.csv")[: args.train or args.steps * args.batch]
    sources = tok([linearise(mr) for mr, _ in rows], truncation=True, max_length=args.max_source)["input_ids"]
    targets = tok([ref for _, ref in rows], truncation=True, max_length=args.max_target)["input_ids"]
    examples = [{"input_ids": s + [eos] + t + [eos], "attention_mask": [1] * (len(s) + len(t) + 2),
                 "labels": [-100] * (len(s) + 1) + t + [eos]} for s, t in zip(sources, targets, strict=True)]
    targs = TrainingArguments(
        output_dir=str(out / "trainer"), max_steps=args.steps, per_device_train_batch_size=args.batch,
        learning_rate=args.lr, lr_scheduler_type="linear", weight_decay=0.0, max_grad_norm=1.0,
        optim="adamw_torch_fused", train_sampling_strategy="group_by_length", logging_steps=10, save_strategy="no",
        report_to="none", disable_tqdm=True, use_cpu=not torch.cuda.is_available(), seed=42, data_seed=42,
        dataloader_pin_memory=torch.cuda.is_available(),
    )
    trainer = Trainer(model=model, args=targs, train_dataset=Dataset.from_list(examples),
                      data_collator=DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100))
    ready = time.perf_counter()
    result = trainer.train()
    train_s = time.perf_counter() - ready

    eval_started = time.perf_counter()
    if args.method == "lora":
        model = model.merge_and_unload()  # zero added latency at inference
    model.eval()
    refs: dict[str, list[str]] = {}
    for mr, ref in read_rows("devset.csv"):
        if mr in refs or len(refs) < args.eval:
            refs.setdefault(mr, []).append(ref)
    mrs = list(refs)
    prompts = [s + [eos] for s in tok([linearise(mr) for mr in mrs], truncation=True,
                                       max_length=args.max_source)["input_ids"]]
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    tok.padding_side = "left"
    texts: list[str] = [""] * len(prompts)
    generated = 0
    with torch.inference_mode():
        for start in range(0, len(order), args.eval_batch):
            chunk = order[start : start + args.eval_batch]
            batch = tok.pad({"input_ids": [prompts[i] for i in chunk]}, return_tensors="pt")
            out_ids = model.generate(**batch, max_new_tokens=args.new_tokens, num_beams=args.beams, do_sample=False,
                                     early_stopping=args.beams > 1, pad_token_id=tok.pad_token_id, eos_token_id=eos,
                                     use_cache=True)
            new = out_ids[:, batch["input_ids"].shape[1] :]
            for i, row in zip(chunk, new.tolist(), strict=True):
                row = row[: row.index(eos) + 1] if eos in row else row
                generated += len(row)
                texts[i] = tok.decode(row, skip_special_tokens=True).strip()
    generate_s = time.perf_counter() - eval_started
    width = max(len(r) for r in refs.values())
    streams = [[refs[mr][k] if k < len(refs[mr]) else None for mr in mrs] for k in range(width)]
    metrics = {"bleu": sacrebleu.corpus_bleu(texts, streams, lowercase=True, tokenize="13a").score,
               "chrf": sacrebleu.corpus_chrf(texts, streams).score}
    eval_s = time.perf_counter() - eval_started
    with open(out / "predictions.jsonl", "w") as handle:
        for mr, text in zip(mrs, texts, strict=True):
            handle.write(json.dumps({"input": mr, "prediction": text, "references": refs[mr]}) + "\n")
    record = {"metrics": metrics, "train_loss": result.training_loss,
              "timings": {"setup_s": ready - started, "train_s": train_s, "eval_s": eval_s, "generate_s": generate_s,
                          "generated_tokens": generated, "generated_tokens_per_s": generated / generate_s,
                          "total_s": time.perf_counter() - started}}
    (out / "results.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record))


if __name__ == "__main__":
    main()
