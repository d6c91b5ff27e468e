"""Thread choice: never more than the usable CPUs (affinity, cgroup quota, Slurm), one for small models."""

from __future__ import annotations

import os

import pytest

from peftrun.errors import PeftrunError
from peftrun.threads import (
    SMALL_HIDDEN,
    available_cpus,
    busy_elsewhere,
    cgroup_cpu_quota,
    check_threads,
    choose_threads,
    idle_cpus,
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in ("OMP_NUM_THREADS", "SLURM_CPUS_PER_TASK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr("peftrun.threads.cgroup_cpu_quota", lambda: None)
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 1, 2, 3, 4, 5, 6, 7})
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    monkeypatch.setattr("peftrun.threads.busy_elsewhere", lambda: 0.2)


def test_cgroup_v2_and_v1_quota(tmp_path):
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_quota(str(tmp_path)) == 2  # 1.5 CPUs rounds up
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_quota(str(tmp_path)) is None
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("300000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_quota(str(v1)) == 3
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpu_quota(str(v1)) is None
    assert cgroup_cpu_quota(str(tmp_path / "absent")) is None


def test_smallest_limit_wins(monkeypatch):
    assert available_cpus() == (8, "affinity")
    monkeypatch.setattr("peftrun.threads.cgroup_cpu_quota", lambda: 3)
    assert available_cpus() == (3, "cgroup quota")
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "2")
    assert available_cpus() == (2, "SLURM_CPUS_PER_TASK")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # torchrun: the node's CPUs are shared by its processes
    assert available_cpus() == (1, "SLURM_CPUS_PER_TASK / LOCAL_WORLD_SIZE")


def test_choice(monkeypatch):
    assert choose_threads(None, 768)["threads"] == 8
    assert choose_threads(None, SMALL_HIDDEN - 1) == {"threads": 1, "available": 8,
                                                      "reason": f"hidden {SMALL_HIDDEN - 1} < {SMALL_HIDDEN}"}
    assert choose_threads(None, None)["threads"] == 8
    assert choose_threads(3, 64)["threads"] == 3  # trainer.threads overrides
    monkeypatch.setenv("OMP_NUM_THREADS", "16")
    assert choose_threads(None, 768) == {"threads": 8, "available": 8, "reason": "OMP_NUM_THREADS"}
    monkeypatch.setattr("peftrun.threads.busy_elsewhere", lambda: 5.6)  # 6 CPUs busy elsewhere: 2 left
    assert choose_threads(None, 768)["threads"] == 8  # OMP_NUM_THREADS still wins
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert choose_threads(None, 768) == {"threads": 2, "available": 8, "reason": "affinity, machine busy"}
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 1})  # confined (cpuset): the load is not ours
    assert choose_threads(None, 768)["threads"] == 2 and idle_cpus(2) is None
    with pytest.raises(PeftrunError, match="trainer.threads=0"):
        check_threads(0)


def test_busy_elsewhere_counts_other_processes_not_this_one(tmp_path, monkeypatch):
    """Busy CPU time of the machine over the window minus this process's own: a sweep's previous job (gone) and
    this process's own work do not count, as they do in the 1-minute load average."""
    stat = tmp_path / "stat"
    tick = os.sysconf("SC_CLK_TCK")
    # user nice system idle iowait irq softirq steal
    stat.write_text("cpu  1000 0 500 9000 100 0 0 0 0 0\ncpu0 ...\n")
    clock = iter([0.0, 0.5])
    own = iter([10.0, 10.25])  # this process used 0.25 CPU s during the window
    monkeypatch.setattr("peftrun.threads.time.monotonic", lambda: next(clock))
    monkeypatch.setattr("peftrun.threads.time.process_time", lambda: next(own))
    # during the window the machine was busy for 0.75 CPU s (user + system), idle the rest
    monkeypatch.setattr("peftrun.threads.time.sleep", lambda _s: stat.write_text(
        f"cpu  {1000 + int(0.5 * tick)} 0 {500 + int(0.25 * tick)} 9100 100 0 0 0 0 0\n"))
    assert busy_elsewhere(0.5, str(stat)) == pytest.approx((0.75 - 0.25) / 0.5, abs=2 / tick)
    monkeypatch.setattr(os, "getloadavg", lambda: (3.0, 1.0, 1.0))
    assert busy_elsewhere(0.5, str(tmp_path / "absent")) == 3.0  # no /proc/stat: the load average
