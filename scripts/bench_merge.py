"""Benchmark: does merged LoRA add zero inference latency? Base vs unmerged vs merged, side by side.

    python scripts/bench_merge.py [--backbone gpt2] [--repeats 20] [--tokens 128]

Builds the backbone from its published config (random weights: latency does not depend on the values),
applies LoRA (r=4 on q and v), and times a forward pass of (1, tokens) and greedy generation of 32 tokens
for the base model, the unmerged LoRA model and the merged one, interleaving the three so machine noise
hits all alike. Prints medians and ratios to base. Not a test: numbers vary by machine.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("PEFTRUN_DATA_DIR", ROOT.parent / "shared" / "data"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="gpt2")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=32)
    args = parser.parse_args()

    from peftrun.backbones import load_backbone
    from peftrun.config import BackboneConfig, MethodConfig, PathsConfig
    from peftrun.methods import apply_method

    if not (DATA / "configs" / args.backbone).exists():
        raise SystemExit(f"{DATA / 'configs' / args.backbone} not found: set PEFTRUN_DATA_DIR")
    cfg = OmegaConf.structured(BackboneConfig(name=args.backbone, family="gpt2", source=args.backbone, init="random",
                                              config_path=str(DATA / "configs" / args.backbone)))
    torch.manual_seed(0)
    backbone = load_backbone(cfg, OmegaConf.structured(PathsConfig(data_dir=str(DATA))))
    model = backbone.model.eval()
    ids = torch.randint(0, model.config.vocab_size, (1, args.tokens))

    def forward(net: torch.nn.Module) -> None:
        net(input_ids=ids)

    def generate(net: torch.nn.Module) -> None:
        net.generate(input_ids=ids[:, :16], max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                       do_sample=False, pad_token_id=0)

    base = copy.deepcopy(model)  # an untouched twin, so all three variants interleave in one loop
    applied = apply_method(model, backbone.anatomy, OmegaConf.structured(MethodConfig(
        name="lora", deltas=[{"kind": "lora", "rank": 4, "alpha": 32.0, "targets": ["q", "v"]}])))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.02)  # a trained-looking B, so merging changes the weights
    variants = (("base", base, None), ("unmerged", model, False), ("merged", model, True))
    timings = {name: {"forward": [], "generate": []} for name, _, _ in variants}
    with torch.inference_mode():
        for _ in range(args.repeats):
            for name, net, merged in variants:
                if merged:
                    applied.merge()
                for what, fn in (("forward", forward), ("generate", generate)):
                    t0 = time.perf_counter()
                    fn(net)
                    timings[name][what].append(time.perf_counter() - t0)
                if merged:
                    applied.unmerge()
    medians = {m: {w: statistics.median(v) for w, v in d.items()} for m, d in timings.items()}
    result = {"args": vars(args), "median_s": medians,
              "ratio_to_base": {m: {w: medians[m][w] / medians["base"][w] for w in d} for m, d in medians.items()}}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
