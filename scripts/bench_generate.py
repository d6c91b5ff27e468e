"""Benchmark: greedy evaluation decoding, transformers' model.generate vs peftrun's lean loops (peftrun/decode.py).

All run through `peftrun.generate.generate_ids` (same length-sorted prompts), on one random-init GPT-2
(published config, real GPT-2 tokenizer) in one process, interleaved (the order rotates each repeat), so
machine load hits all alike:
  hf          task.generation.decoder=hf: model.generate per left-padded batch
  lean        the per-batch lean loop (greedy_decode: finished rows leave the batch); the continuous loop is
              switched off for this side
  continuous  decoder=auto: continuous_greedy_decode (finished rows leave, waiting prompts refill the batch)

Two workloads:
  natural      the random model as is. It almost never emits EOS, so every row runs max_new_tokens steps:
               this measures only the per-step overhead of each loop (no row is ever dropped).
  forced-eos   a forward hook forces EOS where (last input id * 31 + its position) % --stop-every == 0, a
               pseudo-random stopping step per row (~ --stop-every tokens on average) that depends on the row
               alone, so both decoders stop rows at the same steps. This stands in for a trained model whose
               outputs end at different lengths: it shows what dropping finished rows saves.

    python scripts/bench_generate.py [--eval 64] [--batch 16] [--new-tokens 32] [--repeats 2]

Prints seconds per pass, the ratios lean / hf and continuous / hf, and how many rows equal hf's tokens. Not a test: numbers vary.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from bench_train import DATA, build_model, load_e2e  # scripts/ is on sys.path when this file runs


def eos_forcing_hook(model, eos: int, every: int):
    """Force EOS (as the top logit of the last position) where (input id * 31 + position) % every == 0."""

    def hook(_module, _args, kwargs, output):
        ids, positions = kwargs["input_ids"][:, -1], kwargs["position_ids"][:, -1]
        stop = (ids * 31 + positions) % every == 0
        if bool(stop.any()):
            last = output.logits[:, -1]
            last[stop, eos] = last[stop].amax(-1) + 1.0
        return output

    return model.register_forward_hook(hook, with_kwargs=True)


DECODERS = ("hf", "lean", "continuous")


def timed(backbone, prompts, gen, decoder: str) -> tuple[float, list[list[int]]]:
    import peftrun.generate as module

    continuous_kwargs = module._continuous_kwargs
    if decoder == "lean":  # the per-batch loop: no continuous batching
        module._continuous_kwargs = lambda *args: None
    try:
        started = time.perf_counter()
        ids = module.generate_ids(backbone.model, backbone.tokenizer, "decoder", prompts, gen)
        return time.perf_counter() - started, ids
    finally:
        module._continuous_kwargs = continuous_kwargs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="gpt2")
    parser.add_argument("--eval", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2, help="timed passes per decoder and workload")
    parser.add_argument("--stop-every", type=int, default=12, help="forced-eos: mean steps before EOS")
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
    gens = {d: OmegaConf.structured(GenerationConfig(num_beams=1, max_new_tokens=args.new_tokens,
                                                     batch_size=args.batch, decoder="hf" if d == "hf" else "auto"))
            for d in DECODERS}
    for decoder in DECODERS[1:]:  # warm-up (allocator, kernels), not timed
        timed(backbone, prompts[: args.batch * 2], gens[decoder], decoder)
    results = {}
    for workload in ("natural", "forced-eos"):
        handle = None
        if workload == "forced-eos":
            handle = eos_forcing_hook(backbone.model, backbone.tokenizer.eos_token_id, args.stop_every)
        seconds: dict[str, list[float]] = {d: [] for d in DECODERS}
        outputs: dict[str, list[list[int]]] = {}
        for repeat in range(args.repeats):
            for decoder in DECODERS[repeat % 3:] + DECODERS[: repeat % 3]:
                elapsed, outputs[decoder] = timed(backbone, prompts, gens[decoder], decoder)
                seconds[decoder].append(elapsed)
        if handle is not None:
            handle.remove()
        lengths = [len(row) for row in outputs["hf"]]
        hf_s = statistics.median(seconds["hf"])
        results[workload] = {f"{d}_s": [round(s, 2) for s in seconds[d]] for d in DECODERS}
        for decoder in DECODERS[1:]:
            same = sum(a == b for a, b in zip(outputs["hf"], outputs[decoder], strict=True))
            results[workload][f"ratio_{decoder}_over_hf"] = round(statistics.median(seconds[decoder]) / hf_s, 3)
            results[workload][f"{decoder}_identical_rows"] = f"{same}/{len(lengths)}"
        results[workload]["mean_new_tokens"] = round(sum(lengths) / len(lengths), 1)
        print(workload, json.dumps(results[workload]), flush=True)
    print("natural: no row ends early, so this is the per-step overhead alone; forced-eos: rows end at "
          "pseudo-random steps (a stand-in for a trained model), so dropped (lean) and refilled (continuous) rows show.")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "bench_generate.json").write_text(json.dumps({"args": vars(args), **results}, indent=2))


if __name__ == "__main__":
    main()
