"""`peftrun` command line: Hydra composes the config; `run_experiment` does the work.

Kept thin and import-light so `peftrun --help` and `--cfg job` answer without importing torch.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from peftrun.config import register_configs
from peftrun.errors import PeftrunError

register_configs()
log = logging.getLogger("peftrun")
CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")  # the repository's conf/ (editable install)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def main(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from rich.console import Console

    hydra_cfg = HydraConfig.get()
    console = Console(stderr=False)
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    _quiet_libraries()
    try:
        from peftrun.experiment import run_experiment

        record = run_experiment(cfg, hydra_cfg.runtime.output_dir, list(hydra_cfg.overrides.task), console)
    except PeftrunError as err:
        if multirun:  # one failing job must not end the sweep; its record says "failed"
            log.error("job %s failed: %s", hydra_cfg.job.num, err)
            return None
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    return _objective(record)


def _objective(record: dict) -> float | None:
    """The first metric of the first eval split (what a Hydra sweeper such as Optuna optimises)."""
    for values in (record.get("metrics") or {}).values():
        for value in values.values():
            return float(value)
    return None


def _quiet_libraries() -> None:
    import os

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for name in ("transformers", "datasets", "accelerate"):
        logging.getLogger(name).setLevel(logging.ERROR)


if __name__ == "__main__":
    main()
