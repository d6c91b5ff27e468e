"""`peftrun` command line: Hydra composes the config; `run_experiment` does the work.

Kept thin and import-light so `peftrun --help` and `--cfg job` answer without importing torch.
"""

from __future__ import annotations

import logging
import os
import sys

import hydra
from omegaconf import DictConfig

import peftrun.timing  # noqa: F401  the process start (the kernel's start time; else this import's moment)
from peftrun.config import CONF_DIR, register_configs
from peftrun.errors import PeftrunError

register_configs()
log = logging.getLogger("peftrun")


def main() -> None:
    """The `peftrun` command: Hydra's main, with config composition errors (an unknown key such as
    `trainer.lrr=1`, a bad override, a missing group option) reported as one `error:` line with exit code 2
    instead of Hydra's multi-line message and exit code 1."""
    import hydra._internal.utils as hydra_utils

    report = hydra_utils.run_and_report
    if getattr(report, "__peftrun__", False):
        run()
        return

    def one_line_errors(func):  # what Hydra calls around composing the config and running
        from hydra.errors import CompactHydraException

        try:
            return func()
        except CompactHydraException as err:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            print(f"error: {composition_error(err)}", file=sys.stderr)
            sys.exit(2)

    def wrapped(func):
        return report(lambda: one_line_errors(func))

    wrapped.__peftrun__ = True
    hydra_utils.run_and_report = wrapped
    run()


def composition_error(err: BaseException) -> str:
    """Hydra's and OmegaConf's message as one line, with the way out for an unknown key."""
    lines = [line.strip() for text in (str(err), str(err.__cause__ or "")) for line in text.splitlines()]
    noise = ("full_key", "object_type", "reference_type", "To append")
    options = [line for line in lines[1:] if line and " " not in line and not line.startswith(noise)]
    parts = [line.rstrip(".:") for line in lines[:6] if line and line not in options and not line.startswith(noise)]
    message = "; ".join(dict.fromkeys(parts)) or type(err).__name__
    if options:
        message += ": " + ", ".join(options)
    if "not in" in message and "Key" in message:
        message += " (misspelt? `peftrun --cfg job` prints every key; peftrun/config.py documents them)"
    return message


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def run(cfg: DictConfig) -> float | None:
    """One run, or one job of a sweep.

    Exit codes of a single run: 0 done; 2 a PeftrunError (one line); 128 + signal number (143 SIGTERM, 130 SIGINT)
    when training stopped on a signal after saving a checkpoint; any other exception keeps its traceback. In a
    sweep (-m) a failing job is logged with its number and recorded as failed, and the next job runs; a signal
    still ends the sweep (rerun it: complete jobs are skipped, the interrupted one resumes).
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from peftrun.console import make_console
    from peftrun.experiment import Interrupted, is_main_process

    hydra_cfg = HydraConfig.get()
    console = make_console(quiet=not is_main_process())  # under torchrun rank 0 speaks for all
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    run_dir = hydra_cfg.runtime.output_dir
    overrides = list(hydra_cfg.overrides.task)
    _quiet_libraries()
    try:
        _check_distributed_run_dir(hydra_cfg, multirun)
        from peftrun.validation import check_group_choices

        check_group_choices(dict(hydra_cfg.runtime.choices), CONF_DIR)  # optional groups skip a typo silently
        from peftrun.experiment import run_experiment

        record = run_experiment(cfg, run_dir, overrides, console)
    except Interrupted as err:
        if is_main_process():
            print(f"interrupted: {err}", file=sys.stderr)
        sys.exit(128 + err.signum)
    except PeftrunError as err:
        if multirun:  # one failing job must not end the sweep; its record says "failed"
            log.error("job %s failed: %s", hydra_cfg.job.num, err)
            _record_failure(cfg, run_dir, overrides, err)
            return None
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except Exception as err:
        if multirun:
            log.exception("job %s failed: %s: %s", hydra_cfg.job.num, type(err).__name__, err)
            _record_failure(cfg, run_dir, overrides, err)
            return None
        raise
    return _objective(record)


def _check_distributed_run_dir(hydra_cfg, multirun: bool) -> None:
    """Under torchrun every rank composes its own config: a timestamped run dir could differ between ranks."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    pinned = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    if not any(o.split("=", 1)[0].lstrip("+~") == pinned for o in hydra_cfg.overrides.hydra):
        raise PeftrunError(f"under torchrun pass {pinned}=DIR so that every rank writes into one run directory "
                           "(scripts/slurm/multi_gpu.sh does)")


def _record_failure(cfg: DictConfig, run_dir: str, overrides: list[str], err: Exception) -> None:
    """A sweep job that failed before run_experiment wrote its record (e.g. a bad task name) still gets one."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from peftrun.experiment import is_main_process
    from peftrun.records import base_record, read_record, write_record

    error = f"{type(err).__name__}: {err}"
    previous = read_record(run_dir)
    if not is_main_process() or (previous is not None and previous.get("error") == error):
        return  # run_experiment already recorded this failure
    try:
        config = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException:  # the error may be in an interpolation: keep the config as written
        config = OmegaConf.to_container(cfg, resolve=False)
    record = base_record(run_dir, config, overrides, cfg.trainer.seed)
    record["status"] = "failed"
    record["error"] = error
    write_record(run_dir, record)


def _objective(record: dict) -> float | None:
    """The first metric of the first eval split (what a Hydra sweeper such as Optuna optimises)."""
    for values in (record.get("metrics") or {}).values():
        for value in values.values():
            return float(value)
    return None


def _quiet_libraries() -> None:
    import os

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # transformers 5 keeps its own handler: its level comes from this variable, read at import (not yet done here).
    # Among what it hides: a false "pass an attention_mask" alarm when a padding-free batch ends in GPT-2's
    # EOS separator (pad = eos) and generate() drops the all-ones mask.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    for name in ("transformers", "datasets", "accelerate"):
        logging.getLogger(name).setLevel(logging.ERROR)


if __name__ == "__main__":
    main()
