"""Benchmark: beam-search evaluation decoding, transformers' model.generate vs peftrun's loop (peftrun/beam.py).

Both run through `peftrun.generate.generate_ids` (same length-sorted E2E prompts, same batches), on one
random-init GPT-2 (published config, real GPT-2 tokenizer) in one process, alternated (the order flips each
repeat), so machine load hits both alike:
  hf    task.generation.decoder=hf: model.generate per left-padded batch
  lean  decoder=auto: peftrun.beam.beam_decode per batch

Workloads (as scripts/bench_generate.py):
  natural      the random model as is: it almost never emits EOS, so every hypothesis runs max_new_tokens steps;
               the difference is the prefill (once per prompt, not per beam) and the per-step overhead.
  forced-eos   a forward hook forces EOS where (last input id * 31 + its position) % --stop-every == 0, a
               pseudo-random stopping step per hypothesis that depends on its own tokens alone, so both decoders
               see the same model: rows end at different steps (a stand-in for a trained model), and the rows
               whose hypotheses are final leave peftrun's batch.

    python scripts/bench_beam.py [--eval 32] [--batch 8] [--beams 5] [--new-tokens 32] [--repeats 3]

Prints seconds per pass, tokens/s (generated tokens of the returned hypotheses), the median ratio of
throughput lean / hf, and how many rows equal hf's tokens. Not a test: numbers vary.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from bench_generate import eos_forcing_hook  # scripts/ is on sys.path when this file runs
from bench_train import DATA, build_model, load_e2e

DECODERS = ("hf", "lean")


def timed(backbone, prompts, gen) -> tuple[float, list[list[int]]]:
    from peftrun.generate import generate_ids

    started = time.perf_counter()
    ids = generate_ids(backbone.model, backbone.tokenizer, "decoder", prompts, gen)
    return time.perf_counter() - started, ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="gpt2")
    parser.add_argument("--eval", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--beams", type=int, default=5)
    parser.add_argument("--length-penalty", type=float, default=1.0)
    parser.add_argument("--no-repeat", type=int, default=0, help="no_repeat_ngram_size")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per decoder and workload")
    parser.add_argument("--stop-every", type=int, default=12, help="forced-eos: mean steps before EOS")
    parser.add_argument("--workloads", default="natural,forced-eos")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="bench_results")
    args = parser.parse_args()
    if not (DATA / "e2e").exists():
        raise SystemExit(f"{DATA / 'e2e'} not found: set PEFTRUN_DATA_DIR to the shared public data")
    from omegaconf import OmegaConf

    from peftrun.config import GenerationConfig
    from peftrun.data import tokenize_examples

    torch.set_num_threads(args.threads)
    _, evals = load_e2e(0, args.eval)
    backbone = build_model(args.backbone)
    backbone.model.eval()
    prompts = tokenize_examples(evals, backbone.tokenizer, "decoder", 512, 512, None, with_target=False).input_ids
    gens = {d: OmegaConf.structured(GenerationConfig(
        num_beams=args.beams, max_new_tokens=args.new_tokens, length_penalty=args.length_penalty,
        no_repeat_ngram_size=args.no_repeat, batch_size=args.batch, decoder="hf" if d == "hf" else "auto"))
        for d in DECODERS}
    for decoder in DECODERS:  # warm-up (allocator, kernels), not timed
        timed(backbone, prompts[: args.batch], gens[decoder])
    results = {}
    for workload in args.workloads.split(","):
        handle = None
        if workload == "forced-eos":
            handle = eos_forcing_hook(backbone.model, backbone.tokenizer.eos_token_id, args.stop_every)
        seconds: dict[str, list[float]] = {d: [] for d in DECODERS}
        outputs: dict[str, list[list[int]]] = {}
        for repeat in range(args.repeats):
            for decoder in DECODERS if repeat % 2 == 0 else DECODERS[::-1]:
                elapsed, outputs[decoder] = timed(backbone, prompts, gens[decoder])
                seconds[decoder].append(elapsed)
        if handle is not None:
            handle.remove()
        tokens = sum(len(row) for row in outputs["hf"])
        same = sum(a == b for a, b in zip(outputs["hf"], outputs["lean"], strict=True))
        median = {d: statistics.median(seconds[d]) for d in DECODERS}
        results[workload] = {
            **{f"{d}_s": [round(s, 2) for s in seconds[d]] for d in DECODERS},
            **{f"{d}_tokens_per_s": round(tokens / median[d], 1) for d in DECODERS},
            "throughput_lean_over_hf": round(median["hf"] / median["lean"], 3),
            "identical_rows": f"{same}/{len(prompts)}",
            "mean_new_tokens": round(tokens / len(prompts), 1),
        }
        print(workload, json.dumps(results[workload]), flush=True)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "bench_beam.json").write_text(json.dumps({"args": vars(args), **results}, indent=2))


if __name__ == "__main__":
    main()
