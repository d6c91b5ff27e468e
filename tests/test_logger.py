"""Logger backends: per-run settings that are offline-safe, and a clear error for a missing package."""

from __future__ import annotations

import importlib.util
import os

import pytest
from omegaconf import OmegaConf

from peftrun.config import LoggerConfig
from peftrun.errors import PeftrunError
from peftrun.train import configure_logger


def cfg(backend: str, offline: bool = True):
    return OmegaConf.structured(LoggerConfig(backend=backend, project="proj", offline=offline))


def test_tensorboard_writes_into_each_run_dir(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR", raising=False)
    assert configure_logger(cfg("tensorboard"), str(tmp_path / "a")) == "tensorboard"
    assert os.environ["TENSORBOARD_LOGGING_DIR"] == str(tmp_path / "a" / "tensorboard")
    configure_logger(cfg("tensorboard"), str(tmp_path / "b"))  # the next job of a sweep, same process
    assert os.environ["TENSORBOARD_LOGGING_DIR"] == str(tmp_path / "b" / "tensorboard")


def test_none_reports_nowhere(tmp_path) -> None:
    assert configure_logger(cfg("none"), str(tmp_path)) == "none"


@pytest.mark.parametrize(("backend", "variable", "expected"), [
    ("wandb", "WANDB_MODE", "offline"),
    ("mlflow", "MLFLOW_TRACKING_URI", "file:{run}/mlruns"),
])
def test_offline_settings_or_a_one_line_error(tmp_path, monkeypatch, backend, variable, expected) -> None:
    monkeypatch.delenv(variable, raising=False)
    run = str(tmp_path.resolve())
    if importlib.util.find_spec(backend) is None:
        with pytest.raises(PeftrunError, match=f"needs the '{backend}' package: pip install {backend}, or choose logger=none"):
            configure_logger(cfg(backend), run)
    else:
        assert configure_logger(cfg(backend), run) == backend
    assert os.environ[variable] == expected.format(run=run)  # set before the package check: offline-safe either way


def test_unknown_backend_is_refused(tmp_path) -> None:
    with pytest.raises(PeftrunError, match="logger.backend='neptune' is not one of"):
        configure_logger(cfg("neptune"), str(tmp_path))
