"""Shared test fixtures: an isolated cache dir, the shared data dir, offline mode."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("PEFTRUN_DATA_DIR", ROOT.parent / "shared" / "data")).resolve()

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Tiny models on a shared 2-core machine: one thread per process. With more, OpenMP workers spin while
# the other test worker holds the core, and a 1 s test takes 10 s.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA_DIR


def require_data(*parts: str) -> Path:
    """The shared data path, or skip the test with the reason."""
    path = DATA_DIR.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not present (set PEFTRUN_DATA_DIR to the shared public data)")
    return path


@pytest.fixture(scope="session", autouse=True)
def _session_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache dir per test session unless the caller set PEFTRUN_CACHE_DIR (CI sets it to reuse tokenizers)."""
    if "PEFTRUN_CACHE_DIR" not in os.environ:
        os.environ["PEFTRUN_CACHE_DIR"] = str(tmp_path_factory.mktemp("peftrun-cache"))
    return Path(os.environ["PEFTRUN_CACHE_DIR"])


# --- backbones (tests/test_backbones.py) -------------------------------------------------------------------------


@pytest.fixture(scope="session")
def backbone_paths(_session_cache_dir: Path):
    """PathsConfig for load_backbone: the shared data dir and the session's cache (tiny tokenizers train once)."""
    from peftrun.config import PathsConfig

    return PathsConfig(data_dir=str(DATA_DIR), cache_dir=str(_session_cache_dir))


# --- end backbones ------------------------------------------------------------------------------------------------
