"""Process-relative clock and model FLOP/s for the run record's `timings`.

The process start is read from the kernel (/proc/self/stat: when the interpreter started, before any import),
falling back to the moment this module is first imported (the first line of peftrun/cli.py), so the record can
say how long start-up took before peftrun's own code ran.

Model FLOPs follow the usual accounting (Kaplan et al. 2020): N = non-embedding parameters the tokens pass
through (embedding tables are lookups, not matmuls; a head tied to them is left out with them); training costs
6 N per token (forward 2N, backward 4N), generation 2 N per token (prompt tokens once, each new token once with
the KV cache). These are the textbook costs of the full model, not of peftrun's reduced work (target-only
head, no weight gradients of frozen layers), so runs compare against the machine's matmul peak the usual way.
"""

from __future__ import annotations

import os
import time
from typing import Any


def _process_started() -> float:
    """perf_counter() value at the process start (kernel start time; else now)."""
    now = time.perf_counter()
    try:
        with open("/proc/self/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        start_ticks = int(fields[19])  # field 22 (starttime), counted after the ")" that ends the command name
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - start_ticks / os.sysconf("SC_CLK_TCK")
        return now - age if 0 <= age < 3600 else now
    except (OSError, ValueError, IndexError, AttributeError):
        return now


PROCESS_STARTED = _process_started()
_job = {"started": PROCESS_STARTED, "count": 0}


def start_job() -> float:
    """This job's clock start: the process start for the first job, now for every later job of a sweep (`-m`
    runs its jobs one after another in one process, so the process start would count the earlier jobs)."""
    if _job["count"]:
        _job["started"] = time.perf_counter()
    _job["count"] += 1
    return _job["started"]


def since_start() -> float:
    """Seconds since this job started (start_job)."""
    return time.perf_counter() - _job["started"]


def non_embedding_params(model: Any) -> int:
    """Parameters of `model` outside its embedding tables (each shared tensor once)."""
    from torch import nn

    seen: set[int] = set()
    embedding: set[int] = set()
    for module in model.modules():
        if isinstance(module, nn.Embedding):
            embedding.add(id(module.weight))
    total = 0
    for param in model.parameters():  # parameters() yields a tied tensor once
        if id(param) not in embedding and id(param) not in seen:
            seen.add(id(param))
            total += param.numel()
    return total


def model_flops_per_s(params: int, tokens: int, seconds: float, per_token: int) -> float:
    """per_token x params x tokens / seconds (per_token: 6 training, 2 generation)."""
    return per_token * params * tokens / max(seconds, 1e-9)


def count_generation(record: dict[str, Any], split: str, prompts: list[list[int]], generated: list[list[int]],
                     seconds: float) -> None:
    """Prompt and generated token counts of a split (record.data) and the generation time (record.timings)."""
    record["data"][split]["prompt_tokens"] = sum(map(len, prompts))
    record["data"][split]["generated_tokens"] = sum(map(len, generated))
    record["timings"]["generate_s"] = round(record["timings"].get("generate_s", 0.0) + seconds, 3)
