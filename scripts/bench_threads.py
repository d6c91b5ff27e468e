"""Benchmark: a peftrun command alone and beside a busy neighbour (another process's 2-thread matmul loop).

    python scripts/bench_threads.py [--repeats 2] [--neighbour-threads 2] [-- peftrun overrides ...]

Runs `python -m peftrun <overrides>` as a whole process, alternately alone and with the neighbour running, and
prints the median wall time and the record's train_s of each, and the slowdown (goal for the default tiny run:
<= 2.5x). The environment is passed through: unset OMP_NUM_THREADS to see peftrun's own thread choice.
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

NEIGHBOUR = """
import torch, sys
torch.set_num_threads(int(sys.argv[1]))
a = torch.randn(512, 512)
while True:
    a = torch.tanh(a @ a)
"""


def run_once(overrides: list[str], run_dir: Path) -> dict[str, float]:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "peftrun", f"hydra.run.dir={run_dir}", *overrides], check=True,
                   stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    record = json.loads((run_dir / "results.json").read_text())
    threads = (record.get("threads") or {}).get("threads")
    return {"wall_s": wall, "train_s": record["timings"].get("train_s", float("nan")), "threads": threads}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--neighbour-threads", type=int, default=2)
    parser.add_argument("overrides", nargs="*", help="peftrun overrides (after --)")
    args = parser.parse_args()
    runs: dict[str, list[dict[str, float]]] = {"alone": [], "busy": []}
    with tempfile.TemporaryDirectory(prefix="bench_threads_") as tmp:
        for repeat in range(args.repeats):
            for label in ("alone", "busy") if repeat % 2 == 0 else ("busy", "alone"):
                neighbour = None
                if label == "busy":
                    neighbour = subprocess.Popen([sys.executable, "-c", NEIGHBOUR, str(args.neighbour_threads)],
                                                 env={**os.environ, "OMP_NUM_THREADS": str(args.neighbour_threads)})
                    time.sleep(1.0)  # let it reach its loop
                try:
                    result = run_once(args.overrides, Path(tmp) / f"{label}{repeat}")
                finally:
                    if neighbour is not None:
                        neighbour.terminate()
                        neighbour.wait()
                runs[label].append(result)
                print(label, {k: (round(v, 2) if isinstance(v, float) else v) for k, v in result.items()}, flush=True)
    medians = {label: {key: statistics.median(r[key] for r in rs) for key in ("wall_s", "train_s")}
               for label, rs in runs.items()}
    medians["slowdown_wall"] = medians["busy"]["wall_s"] / medians["alone"]["wall_s"]
    medians["slowdown_train"] = medians["busy"]["train_s"] / medians["alone"]["train_s"]
    print(json.dumps(medians, indent=2))


if __name__ == "__main__":
    main()
