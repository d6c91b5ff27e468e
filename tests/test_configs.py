"""Every YAML under conf/ (walked recursively, none listed by hand) composes through Hydra's compose API with
its group/option, resolves, and keeps the conventions: it opens with a comment (the command that uses it),
a backbone / method / task / experiment names itself, and a task YAML holds only the keys its task reads.

The one home of the YAML checks; behaviour of what a YAML builds lives with its module's tests (method
YAMLs applied to every tiny family: test_methods_validate.py; presets' counts: test_presets.py).
"""

from __future__ import annotations

import importlib.util
from dataclasses import fields
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from peftrun.config import CONF_DIR, TaskConfig, register_configs
from peftrun.errors import PeftrunError
from peftrun.tasks.base import TASKS, build_task
from tests.conftest import DATA_DIR

CONF = Path(CONF_DIR)
YAMLS = sorted(p.relative_to(CONF).as_posix() for p in CONF.rglob("*.yaml"))
PRIMARY = ("config.yaml", "score.yaml")  # primary configs; every other YAML is an option of its folder's group
PLUGINS = {  # group -> the Hydra plugin package its options need (optional extras of pyproject.toml)
    "hydra/launcher": "hydra_plugins.hydra_submitit_launcher",
    "hparams_search": "hydra_plugins.hydra_optuna_sweeper",
}
NAMED = ("backbone", "method", "task")  # groups whose node's `name` is the option's name
TASK_OPTIONS = {f.name for f in fields(TaskConfig) if f.metadata.get("task_option")}


def _compose(config_name: str, overrides: list[str], hydra_node: bool = False):
    register_configs()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides, return_hydra_config=hydra_node)


def test_the_walk_sees_every_group():
    groups = {Path(y).parent.as_posix() for y in YAMLS if y not in PRIMARY}
    assert {"backbone", "method", "task", "trainer", "logger", "experiment"} <= groups
    assert set(PRIMARY) <= set(YAMLS)
    methods = {Path(y).stem for y in YAMLS if y.startswith("method/")}
    assert {"full", "lora", "adapter_houlsby", "adapter_pfeiffer", "parallel_adapter", "scaled_parallel_adapter",
            "bitfit", "ft_top2", "head_only", "prefix", "ptuning_v2", "prompt_tuning", "ptuning", "mam"} <= methods


MEMBER_ONLY = ("superni",)  # task YAMLs that configure mixture members (task.mixture.train=[superni:...])


@pytest.mark.parametrize("rel", YAMLS)
def test_every_yaml_composes_and_resolves(rel: str):
    text = (CONF / rel).read_text()
    assert text.startswith("#"), f"{rel} opens with a comment saying how it is used"
    if rel in PRIMARY:
        cfg = _compose(Path(rel).stem, [] if rel == "config.yaml" else ["predictions=p.jsonl"])
        OmegaConf.to_container(cfg, resolve=True)
        return
    group, option = Path(rel).parent.as_posix(), Path(rel).stem
    plugin = PLUGINS.get(group)
    if plugin and not _has(plugin):
        pytest.skip(f"{rel} needs the Hydra plugin {plugin} (an optional extra), not installed here")
    cfg = _compose("config", [f"{group}={option}"], hydra_node=group.startswith("hydra"))
    if group.startswith("hydra"):
        assert cfg.hydra.launcher is not None
        return
    resolved = OmegaConf.to_container(cfg, resolve=True)  # typed merge into the run schema + every interpolation
    if group in NAMED:
        assert resolved[group]["name"] == option
    if group in NAMED + ("experiment",) and not (group == "task" and option in MEMBER_ONLY):
        assert f"{group}={option}" in text.split("\n\n")[0], f"{rel}'s header shows the command `{group}={option}`"


def _has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


@pytest.mark.parametrize("name", sorted(p.stem for p in (CONF / "task").glob("*.yaml")))
def test_task_yaml_holds_only_its_own_task_options(name: str):
    raw = OmegaConf.load(CONF / "task" / f"{name}.yaml")
    if name in MEMBER_ONLY:  # settings of mixture members (`superni:<task>`), not a task of its own
        assert name not in TASKS
        return
    cls = TASKS[name]
    foreign = (set(raw.keys()) & TASK_OPTIONS) - set(cls.options)
    assert not foreign, f"{name}.yaml sets options its task does not read: {sorted(foreign)}"
    merged = OmegaConf.merge(OmegaConf.structured(TaskConfig), raw)
    if name == "mixture":  # a mixture needs members to be a task
        merged.data_dir, merged.mixture.train = "builtin", ["rte"]
    assert type(build_task(merged, str(DATA_DIR))) is cls
    header = (CONF / "task" / f"{name}.yaml").read_text().split("\n")[0]
    if "data_dir=builtin" in header:  # a tiny built-in sample: the YAML's settings load it
        merged.data_dir = "builtin"
        assert build_task(merged).load("validation", grouped=True)


def test_a_task_option_of_another_task_is_refused():
    cfg = OmegaConf.merge(OmegaConf.structured(TaskConfig), OmegaConf.load(CONF / "task" / "rte.yaml"))
    cfg.with_keys = True
    with pytest.raises(PeftrunError, match=r"task.with_keys=True: task 'rte' does not read it \(an option of spider"):
        build_task(cfg)
    cfg.with_keys = False  # the default: nothing set, nothing refused
    build_task(cfg)
