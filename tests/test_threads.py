"""Thread choice: never more than the usable CPUs (affinity, cgroup quota, Slurm), one for small models."""

from __future__ import annotations

import os

import pytest

from peftrun.errors import PeftrunError
from peftrun.threads import SMALL_HIDDEN, available_cpus, cgroup_cpu_quota, check_threads, choose_threads, idle_cpus


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in ("OMP_NUM_THREADS", "SLURM_CPUS_PER_TASK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr("peftrun.threads.cgroup_cpu_quota", lambda: None)
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 1, 2, 3, 4, 5, 6, 7})
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    monkeypatch.setattr(os, "getloadavg", lambda: (0.2, 0.2, 0.2))


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
    monkeypatch.setattr(os, "getloadavg", lambda: (5.6, 1.0, 1.0))  # 6 CPUs busy: 2 left for this run
    assert choose_threads(None, 768)["threads"] == 8  # OMP_NUM_THREADS still wins
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert choose_threads(None, 768) == {"threads": 2, "available": 8, "reason": "affinity, machine busy (load average)"}
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 1})  # confined (cpuset): the load is not ours
    assert choose_threads(None, 768)["threads"] == 2 and idle_cpus(2) is None
    with pytest.raises(PeftrunError, match="trainer.threads=0"):
        check_threads(0)
