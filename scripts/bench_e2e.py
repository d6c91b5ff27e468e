"""Whole-process benchmark: a `peftrun ...` command vs scripts/baseline_peft_trainer.py, the same E2E experiment.

Each side runs as a subprocess, as a user runs it (interpreter start, imports, config, data, tokenisation,
model, training, generation, scoring, files, exit), alternated A B B A ... so machine noise hits both alike.
Reported per configuration: median wall time, the ratio peftrun / baseline (goal <= 0.7), peak resident memory
of each process (os.wait4's ru_maxrss), generated tokens/s, and peftrun's own timings (start-up, process start to
first step, training, evaluation, and the time outside its record's total = the exit).

Configurations (--configs, comma-separated):
  b-lora          GPT-2 from the published config (random init), real GPT-2 tokenizer, LoRA r=4 on c_attn, greedy
  a-lora, a-lora-beam5, a-prefix, a-prefix-beam5
                  SmolLM2-135M-Instruct (real weights, llama family; needs the smollm2-135m-instruct backbone
                  config, which the llama family brings), LoRA r=4 on q, v / prefix-tuning P=10, greedy / beam 5

    python scripts/bench_e2e.py --configs b-lora --steps 20 --batch 8 --eval 32 --repeats 2 [--cache cold]

--cache warm (default) primes peftrun's tokenisation cache once (untimed); cold gives every peftrun run an empty
cache (models linked in). Not a test: numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("PEFTRUN_DATA_DIR", ROOT.parent / "shared" / "data"))
CACHE = Path(os.environ.get("PEFTRUN_CACHE_DIR", "~/.cache/peftrun")).expanduser()
CONFIGS = {  # name: (baseline --model, peftrun backbone overrides, method, beams)
    "b-lora": ("gpt2", ["backbone=gpt2", "backbone.init=random"], "lora", 1),
    "a-lora": ("smollm2-135m-instruct", ["backbone=smollm2-135m-instruct"], "lora", 1),
    "a-lora-beam5": ("smollm2-135m-instruct", ["backbone=smollm2-135m-instruct"], "lora", 5),
    "a-prefix": ("smollm2-135m-instruct", ["backbone=smollm2-135m-instruct"], "prefix", 1),
    "a-prefix-beam5": ("smollm2-135m-instruct", ["backbone=smollm2-135m-instruct"], "prefix", 5),
}


def peftrun_command(name: str, args: argparse.Namespace, run_dir: Path, steps: int | None = None,
                    new_tokens: int | None = None) -> list[str]:
    model, backbone, method, beams = CONFIGS[name]
    method_overrides = ["method=lora", "method.dropout=0.1"] if method == "lora" else ["method=prefix"]
    if method == "lora" and model == "gpt2":
        method_overrides.append("method.targets=[qkv]")  # the fused c_attn, as peft targets it
    return [sys.executable, "-m", "peftrun", *backbone, *method_overrides, "task=e2e", f"task.data_dir={DATA / 'e2e'}",
            f"task.max_train_examples={args.train or args.steps * args.batch}", f"task.max_eval_examples={args.eval}",
            "task.metrics=[bleu,chrf]", f"task.generation.num_beams={beams}", "task.generation.length_penalty=1.0",
            "task.generation.no_repeat_ngram_size=0", f"task.generation.max_new_tokens={new_tokens or args.new_tokens}",
            f"task.generation.batch_size={args.eval_batch}", f"trainer.max_steps={steps or args.steps}",
            f"trainer.batch_size={args.batch}", f"trainer.lr={args.lr}", "logger=none", *args.peftrun_extra,
            f"hydra.run.dir={run_dir}"]


def baseline_command(name: str, args: argparse.Namespace, run_dir: Path) -> list[str]:
    model, _, method, beams = CONFIGS[name]
    return [sys.executable, str(ROOT / "scripts" / "baseline_peft_trainer.py"), "--model", model, "--method", method,
            "--steps", str(args.steps), "--batch", str(args.batch), "--lr", str(args.lr),
            "--train", str(args.train or args.steps * args.batch), "--eval", str(args.eval),
            "--eval-batch", str(args.eval_batch), "--new-tokens", str(args.new_tokens), "--beams", str(beams),
            "--out", str(run_dir)]


def run(command: list[str], env: dict[str, str], log: Path) -> dict[str, float]:
    """Wall seconds and peak RSS (MB) of one whole process."""
    started = time.perf_counter()
    with open(log, "w") as handle:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"exit {proc.returncode}: {' '.join(command)}\n{log.read_text()[-3000:]}")
    return {"wall_s": wall, "peak_mb": usage.ru_maxrss / 1024}


def fresh_cache(tmp: Path, label: str) -> Path:
    """An empty peftrun cache dir whose models/ links to the real one (checkpoints are not re-fetched)."""
    cache = Path(tempfile.mkdtemp(prefix=f"cache_{label}_", dir=tmp))
    if (CACHE / "models").exists():
        (cache / "models").symlink_to(CACHE / "models")
    return cache


def bench(name: str, args: argparse.Namespace, tmp: Path) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PEFTRUN_DATA_DIR": str(DATA), "PYTHONPATH": str(ROOT)}
    env.pop("OMP_NUM_THREADS", None)  # each side chooses its threads
    warm = fresh_cache(tmp, "warm")
    if args.cache == "warm":  # tokenise once (same train and eval examples), untimed
        prime = peftrun_command(name, args, tmp / f"{name}_prime", steps=1, new_tokens=1)
        run(prime, {**env, "PEFTRUN_CACHE_DIR": str(warm)}, tmp / f"{name}_prime.log")
    runs: dict[str, list[dict]] = {"peftrun": [], "baseline": []}
    for repeat in range(args.repeats):
        sides = ("peftrun", "baseline") if repeat % 2 == 0 else ("baseline", "peftrun")
        for side in sides:
            run_dir = tmp / f"{name}_{side}_{repeat}"
            if side == "peftrun":
                cache = warm if args.cache == "warm" else fresh_cache(tmp, "cold")
                measured = run(peftrun_command(name, args, run_dir), {**env, "PEFTRUN_CACHE_DIR": str(cache)},
                               tmp / f"{run_dir.name}.log")
            else:
                measured = run(baseline_command(name, args, run_dir), env, tmp / f"{run_dir.name}.log")
            record = json.loads((run_dir / "results.json").read_text())
            measured["record"] = {"timings": record["timings"], "metrics": record["metrics"]}
            if side == "peftrun":
                measured["record"]["generated_tokens"] = record["data"]["validation"]["generated_tokens"]
            runs[side].append(measured)
            print(name, side, round(measured["wall_s"], 2), "s", round(measured["peak_mb"]), "MB", flush=True)
    return summarize(runs)


def summarize(runs: dict[str, list[dict]]) -> dict:
    def median(side: str, get) -> float:
        return statistics.median(get(r) for r in runs[side])

    out: dict = {}
    for side in runs:
        out[side] = {"wall_s": median(side, lambda r: r["wall_s"]), "peak_mb": median(side, lambda r: r["peak_mb"]),
                     "train_s": median(side, lambda r: r["record"]["timings"]["train_s"]),
                     "eval_s": median(side, lambda r: r["record"]["timings"]["eval_s"]),
                     "generated_tokens_per_s": median(side, lambda r: r["record"]["timings"]["generated_tokens_per_s"]),
                     "walls": [round(r["wall_s"], 2) for r in runs[side]],
                     "timings": [r["record"]["timings"] for r in runs[side]],
                     "metrics": runs[side][-1]["record"]["metrics"]}
    p = out["peftrun"]
    for key in ("startup_s", "setup_s", "train_data_s", "to_first_step_s", "finish_s", "total_s"):
        p[key] = median("peftrun", lambda r, key=key: r["record"]["timings"].get(key, float("nan")))
    p["outside_record_s"] = median("peftrun", lambda r: r["wall_s"] - r["record"]["timings"]["total_s"])
    out["ratio_wall"] = p["wall_s"] / out["baseline"]["wall_s"]
    out["ratio_peak_mb"] = p["peak_mb"] / out["baseline"]["peak_mb"]
    out["ratio_generated_tokens_per_s"] = p["generated_tokens_per_s"] / out["baseline"]["generated_tokens_per_s"]
    return out


def table(results: dict[str, dict]) -> str:
    lines = ["| config | peftrun wall s | baseline wall s | ratio | peak MB (p / b) | train s (p / b) | eval s (p / b) "
             "| gen tok/s ratio | peftrun start-up / to first step / after record s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        p, b = r["peftrun"], r["baseline"]
        lines.append(f"| {name} | {p['wall_s']:.1f} | {b['wall_s']:.1f} | **{r['ratio_wall']:.2f}** | "
                     f"{p['peak_mb']:.0f} / {b['peak_mb']:.0f} | {p['train_s']:.1f} / {b['train_s']:.1f} | "
                     f"{p['eval_s']:.1f} / {b['eval_s']:.1f} | {r['ratio_generated_tokens_per_s']:.2f} | "
                     f"{p['startup_s']:.1f} / {p['to_first_step_s']:.1f} / {p['outside_record_s']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="b-lora", help=f"comma-separated among {', '.join(CONFIGS)}")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--train", type=int, default=None, help="training pairs; default steps x batch")
    parser.add_argument("--eval", type=int, default=32)
    parser.add_argument("--eval-batch", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--cache", choices=("warm", "cold"), default="warm")
    parser.add_argument("--peftrun-extra", nargs="*", default=[], help="more peftrun overrides")
    parser.add_argument("--out", default="bench_results/bench_e2e.json")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench_e2e_") as tmp:
        for name in args.configs.split(","):
            if name not in CONFIGS:
                raise SystemExit(f"--configs: unknown {name!r}; known: {', '.join(CONFIGS)}")
            results[name] = bench(name, args, Path(tmp))
    print(json.dumps(results, indent=2))
    print(table(results))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
