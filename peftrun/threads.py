"""How many compute threads torch uses: never more than the CPUs this process may run on, one for small models.

CPUs this process may use = the smallest of: its CPU affinity (taskset, cpusets), the cgroup CPU quota (cgroup v2
`cpu.max`, v1 `cpu.cfs_quota_us / cpu.cfs_period_us`, rounded up), Slurm's `SLURM_CPUS_PER_TASK`; divided
among the processes of this node under torchrun (LOCAL_WORLD_SIZE). torch's own default counts the machine's
cores, which oversubscribes a container or a Slurm allocation.

Small models (residual width below SMALL_HIDDEN) get one thread: their matmuls are too small to split, and
each parallel region ends in a barrier where a thread waits for its partner; when another process holds the
other core, that wait is a whole scheduler slice per op. Measured (scripts/bench_threads.py, default tiny run,
docs/ARCHITECTURE.md "Benchmarks"): one thread trains tiny-gpt2 (hidden 64, also 256) 2.5x faster alone and >10x
faster on a busy machine; MiniLM-L6 (hidden 384) trains 1.7x faster on two threads than on one, alone.
Larger models get the usable CPUs minus those other processes keep busy, when the process may use the whole
machine (a shared VM): two threads on two cores beside a busy neighbour evaluated GPT-2 in 51 s, one thread in
18 s. "Busy" is sampled now from /proc/stat over BUSY_WINDOW_S, minus this process's own CPU time: the 1-minute
load average (the fallback where /proc/stat is unreadable) still counts the previous job of a sweep, or this
process's own model loading (a run started right after another job got 1 of 2 threads on a quiet machine).
`trainer.threads` (an integer) overrides the choice; OMP_NUM_THREADS set by the user is respected.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

SMALL_HIDDEN = 384  # residual width below which one thread is used (64 and 256 faster on one; 384 faster on two)
BUSY_WINDOW_S = 0.2  # how long other processes' CPU use is sampled


def available_cpus() -> tuple[int, str]:
    """(CPUs this process may use, which limit decided it)."""
    limits = {"affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1}
    quota = cgroup_cpu_quota()
    if quota is not None:
        limits["cgroup quota"] = quota
    slurm = os.environ.get("SLURM_CPUS_PER_TASK", "")
    if slurm.isdigit() and int(slurm) > 0:
        limits["SLURM_CPUS_PER_TASK"] = int(slurm)
    source = min(limits, key=limits.get)
    cpus = limits[source]
    local = os.environ.get("LOCAL_WORLD_SIZE", "1")
    if local.isdigit() and int(local) > 1:
        cpus, source = max(1, cpus // int(local)), f"{source} / LOCAL_WORLD_SIZE"
    return max(1, cpus), source


def cgroup_cpu_quota(root: str = "/sys/fs/cgroup") -> int | None:
    """Whole CPUs the cgroup quota allows (rounded up), or None when unlimited or unreadable."""
    base = Path(root)
    try:
        v2 = base / "cpu.max"
        if v2.exists():
            quota, period = v2.read_text().split()[:2]
            return None if quota == "max" else max(1, math.ceil(int(quota) / int(period)))
        v1 = base / "cpu" / "cpu.cfs_quota_us"
        if v1.exists():
            quota = int(v1.read_text())
            period = int((base / "cpu" / "cpu.cfs_period_us").read_text())
            return None if quota <= 0 else max(1, math.ceil(quota / period))
    except (OSError, ValueError):
        return None
    return None


def choose_threads(requested: int | None, hidden: int | None) -> dict[str, Any]:
    """The thread count and why: {"threads", "available", "reason"}.

    requested: trainer.threads (None = choose); hidden: the backbone's residual width (None = unknown).
    """
    available, limit = available_cpus()
    if requested is not None:
        return {"threads": requested, "available": available, "reason": "trainer.threads"}
    user = os.environ.get("OMP_NUM_THREADS", "")
    if user.isdigit() and int(user) > 0:
        return {"threads": min(int(user), available), "available": available, "reason": "OMP_NUM_THREADS"}
    if hidden is not None and hidden < SMALL_HIDDEN:
        return {"threads": 1, "available": available, "reason": f"hidden {hidden} < {SMALL_HIDDEN}"}
    idle = idle_cpus(available)
    if idle is not None and idle < available:
        return {"threads": max(1, idle), "available": available, "reason": f"{limit}, machine busy"}
    return {"threads": available, "available": available, "reason": limit}


def idle_cpus(available: int) -> int | None:
    """CPUs not kept busy by other processes, when this process may use every CPU of the machine (a shared
    workstation or VM); None when confined to a share of it (cpuset, Slurm): the machine's load is then other jobs'."""
    if available < (os.cpu_count() or 1):
        return None
    busy = busy_elsewhere()
    if busy is None:
        return None
    return available - int(busy + 0.5)


def busy_elsewhere(window: float = BUSY_WINDOW_S, stat: str = "/proc/stat") -> float | None:
    """CPUs other processes keep busy: the machine's busy CPU time over `window` seconds minus this process's own,
    per second. Falls back to the 1-minute load average where /proc/stat cannot be read; None if neither exists."""
    def busy_seconds() -> float:
        with open(stat, encoding="ascii") as handle:
            fields = [int(value) for value in handle.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")  # guest time is already in user

    try:
        machine, own, clock = busy_seconds(), time.process_time(), time.monotonic()
        time.sleep(window)
        machine, own = busy_seconds() - machine, time.process_time() - own
        return max(0.0, (machine - own) / (time.monotonic() - clock))
    except (OSError, ValueError, IndexError):
        return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def check_threads(requested: int | None) -> None:
    """Refuse a non-positive trainer.threads before any expensive work."""
    from peftrun.errors import PeftrunError

    if requested is not None and requested < 1:
        raise PeftrunError(f"trainer.threads={requested}: give a positive thread count, or null to choose")


def set_compute_threads(requested: int | None, model: Any, family: Any) -> dict[str, Any]:
    """Choose (choose_threads) and apply torch's intra-op thread count for `model`; returns the choice for the
    run record. `family`: the backbone's Family (its `shape` gives the residual width)."""
    import torch

    check_threads(requested)
    try:
        hidden = family.shape(model.config).hidden
    except (AttributeError, TypeError):
        hidden = None
    choice = choose_threads(requested, hidden)
    torch.set_num_threads(choice["threads"])
    return choice
