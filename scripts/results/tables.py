"""Markdown tables for docs/RESULTS.md, read from the run records the scripts in scripts/results/ wrote.

    python scripts/results/tables.py outputs/results

Every number printed comes from a results.json (or, for the re-decided rank rules, from peftrun-score's decision
rule applied to a predictions.jsonl); nothing is typed in. Sections: e2e, webnlg, rank, rte, wsc, rte_1epoch,
held-out NLI, DART IPT vs prompt tuning, Super-NI, multi-task P-tuning v2.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

from peftrun.formulations.options import rechoose


def _records(folder: Path) -> list[dict[str, Any]]:
    out = []
    for path in sorted(folder.glob("**/results.json")):
        record = json.loads(path.read_text())
        if record.get("status") == "complete":
            record["_dir"] = path.parent
            out.append(record)
    return out


def _metrics(record: dict[str, Any]) -> dict[str, float]:
    split = record["config"]["task"]["eval_splits"][0]
    return record["metrics"][split]


def _label(record: dict[str, Any]) -> str:
    name = record["_dir"].name
    return name.split("_", 1)[1].removeprefix("minilm-l6_").rsplit("_", 1)[0] if name[0].isdigit() else name


def _ms(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def generation_table(records: list[dict[str, Any]]) -> str:
    lines = ["| run | BLEU | chrF | trainable | saved | train s | wall s | prompt tokens / query |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in records:
        m, p, t = _metrics(r), r["params"], r["timings"]
        data = r["data"][r["config"]["task"]["eval_splits"][0]]
        tokens = data.get("mean_prompt_tokens") or data["prompt_tokens"] / data["examples"]
        lines.append(f"| {_label(r)} | {m['bleu']:.2f} | {m['chrf']:.2f} | {p['trainable']:,} | {p['saved']:,} | "
                     f"{t.get('train_s', 0):.0f} | {t['total_s']:.0f} | {tokens:.0f} |")
    return "\n".join(lines)


def seeds_table(records: list[dict[str, Any]], majority: float) -> str:
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault(r["config"]["method"]["name"], []).append(r)
    lines = ["| method | accuracy (3 seeds) | per seed | trainable | train loss | train s | majority class |",
             "| --- | ---: | --- | ---: | ---: | ---: | ---: |"]
    for method, runs in groups.items():
        acc = [_metrics(r)["accuracy"] for r in runs]
        loss = [r["train"]["train_loss"] for r in runs]
        lines.append(f"| {method} | {_ms(acc)} | {', '.join(f'{a:.1f}' for a in acc)} | "
                     f"{runs[0]['params']['trainable']:,} | {statistics.mean(loss):.3f} | "
                     f"{statistics.mean(r['timings']['train_s'] for r in runs):.0f} | {100 * majority:.1f} |")
    return "\n".join(lines)


def rank_table(records: list[dict[str, Any]]) -> str:
    lines = ["| run | sum | sum + calibration | mean | mean + calibration | prompt tokens / query | eval s |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in records:
        rows = [json.loads(line) for line in (r["_dir"] / "predictions.jsonl").read_text().splitlines()]
        gold = [row["references"][0] for row in rows]
        cells = []
        for normalize in ("sum", "mean"):
            for calibrate in (False, True):
                right = sum(rechoose(row, normalize, calibrate) == g for row, g in zip(rows, gold, strict=True))
                cells.append(f"{100 * right / len(rows):.1f}")
        data = r["data"][r["config"]["task"]["eval_splits"][0]]
        lines.append(f"| {r['_dir'].name} | {' | '.join(cells)} | {data.get('mean_prompt_tokens', 0):.0f} | "
                     f"{r['timings']['eval_s']:.0f} |")
    return "\n".join(lines)


def heldout_table(records: list[dict[str, Any]]) -> str:
    """FLAN held-out members: accuracy over the ten templates (mean / median / best, and the spread)."""
    lines = ["| run | RTE mean | RTE median | RTE best | RTE min | CB mean | CB median | CB best | CB min | train s |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in records:
        cells = []
        for task in ("rte", "cb"):
            per = [v["accuracy"] for k, v in r["metrics"].items() if k.startswith(f"{task}/validation/")]
            agg = r["metrics"][f"{task}/validation"]
            if not per:  # template_eval=round_robin: one accuracy over the queries, templates taking turns
                cells += [f"{agg['accuracy']:.1f} (round-robin)", "-", "-", "-"]
                continue
            cells += [f"{agg['accuracy_mean']:.1f}", f"{agg['accuracy_median']:.1f}", f"{agg['accuracy_best']:.1f}",
                      f"{min(per):.1f}"]
        lines.append(f"| {r['_dir'].name} | {' | '.join(cells)} | {r['timings'].get('train_s', 0):.0f} |")
    return "\n".join(lines)


def seeded_generation_table(groups: dict[str, list[dict[str, Any]]]) -> str:
    """Runs of one setting over seeds: mean ± std (sample) of BLEU and chrF, and each seed's BLEU."""
    lines = ["| run | BLEU | chrF | BLEU per seed | trainable | train s (mean) | prompt tokens / query |",
             "| --- | ---: | ---: | --- | ---: | ---: | ---: |"]
    for name, runs in groups.items():
        bleu = [_metrics(r)["bleu"] for r in runs]
        chrf = [_metrics(r)["chrf"] for r in runs]
        data = runs[0]["data"][runs[0]["config"]["task"]["eval_splits"][0]]
        tokens = data.get("mean_prompt_tokens") or data["prompt_tokens"] / data["examples"]
        lines.append(f"| {name} | {_ms(bleu)} | {_ms(chrf)} | {', '.join(f'{b:.2f}' for b in bleu)} | "
                     f"{runs[0]['params']['trainable']:,} | "
                     f"{statistics.mean(r['timings'].get('train_s', 0) for r in runs):.0f} | {tokens:.0f} |")
    return "\n".join(lines)


def superni_table(records: list[dict[str, Any]]) -> str:
    """Super-NI: exact match and ROUGE-L averaged over the evaluated test tasks (each task counts once)."""
    lines = ["| run | tasks | instances / task | exact match | ROUGE-L | train s | eval s |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in records:
        tasks = {k: v for k, v in r["metrics"].items() if k.startswith("superni:")}
        em = statistics.mean(v["exact_match"] for v in tasks.values())
        rl = statistics.mean(v["rougeL"] for v in tasks.values())
        sizes = {r["data"][k]["examples"] for k in tasks if k in r["data"]}
        lines.append(f"| {r['_dir'].name} | {len(tasks)} | {'/'.join(map(str, sorted(sizes)))} | {em:.2f} | "
                     f"{rl:.2f} | {r['timings'].get('train_s', 0):.0f} | {r['timings']['eval_s']:.0f} |")
    return "\n".join(lines)


def multitask_table(root: Path) -> str:
    """Multi-task P-tuning v2: per task, alone / shared prompts (the multi-task run's own heads) / continued."""
    lines = ["| task | run | accuracy (3 seeds) | per seed | macro-F1 | train s (mean) |",
             "| --- | --- | ---: | --- | ---: | ---: |"]
    for task in ("rte", "cb"):
        for name, folder, key in (("single-task", f"single_{task}", "validation"), ("multi-task (shared)", "shared",
                                  f"{task}/validation"), ("multi-task, then continued", f"continued_{task}",
                                  "validation")):
            runs = _records(root / folder)
            if not runs:
                continue
            acc = [r["metrics"][key]["accuracy"] for r in runs]
            f1 = [r["metrics"][key]["macro_f1"] for r in runs if "macro_f1" in r["metrics"][key]]
            lines.append(f"| {task.upper()} | {name} | {_ms(acc)} | {', '.join(f'{a:.1f}' for a in acc)} | "
                         f"{_ms(f1) if f1 else '-'} | "
                         f"{statistics.mean(r['timings'].get('train_s', 0) for r in runs):.0f} |")
    return "\n".join(lines)


def majority(path: Path) -> float:
    labels = [json.loads(line)["label"] for line in path.read_text().splitlines() if line.strip()]
    return max(labels.count(label) for label in set(labels)) / len(labels)


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "outputs/results")
    data = Path(sys.argv[2] if len(sys.argv) > 2 else "../shared/data")
    e2e = _records(root / "e2e")
    print("## e2e\n\n" + generation_table([r for r in e2e if r["config"]["task"]["name"] == "e2e"]))
    print("\n## webnlg\n\n" + generation_table([r for r in e2e if r["config"]["task"]["name"] == "webnlg"]))
    print("\n## rank\n\n" + rank_table(_records(root / "rank")))
    for name, val in (("rte", "superglue/full/RTE/val.jsonl"), ("wsc", "superglue/full/WSC/val.jsonl"),
                      ("rte_1epoch", "superglue/full/RTE/val.jsonl")):
        if (root / name).exists():
            print(f"\n## {name}\n\n" + seeds_table(_records(root / name), majority(data / val)))
    instruction = root / "instruction"
    if instruction.exists():
        runs = _records(instruction)
        print("\n## held-out NLI\n\n" + heldout_table([r for r in runs if r["_dir"].name.startswith("nli_")]))
        groups: dict[str, list[dict[str, Any]]] = {}
        for r in runs:
            if r["config"]["task"]["name"] == "dart":
                groups.setdefault(r["_dir"].parent.name if r["_dir"].name.isdigit() else r["_dir"].name, []).append(r)
        print("\n## DART: IPT vs prompt tuning\n\n" + seeded_generation_table(groups))
        print("\n## Super-NI\n\n" + superni_table([r for r in runs if r["_dir"].name.startswith("superni_")]))
    if (root / "multitask").exists():
        print("\n## multi-task P-tuning v2\n\n" + multitask_table(root / "multitask"))


if __name__ == "__main__":
    main()
