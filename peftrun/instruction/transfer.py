"""Prompt transfer (method.init_from=<run dir>): a prompt-family method starts from another run's saved prompt.

SPoT (Vu et al. 2022) and multi-task P-tuning v2 initialise a task's prompt with one trained elsewhere (on a
source task or a mixture); IPT can start from a prompt-tuned prompt. What transfers is what a run saves for its
prompt deltas (peftrun/methods/applied.py: "deltas.<name>.<tensor>"):
  input prompts  prompt_tuning / ptuning: {"prompt": (n, d)}, interchangeable between the two kinds;
  deep prompts   prefix (prefix-tuning, P-tuning v2): {<group>: (layers, 2, P, d_in)}.
The i-th prompt delta of this method takes the i-th of the source; kinds, tensor names and shapes must match
(one error line otherwise). Nothing else is taken (no head, no backbone tensors, no LoRA). A loaded prompt trains
as a plain tensor: a prefix MLP or a P-tuning encoder of the new method is dropped, as when a run is reloaded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from peftrun.errors import PeftrunError

INPUT_PROMPTS = ("prompt_tuning", "ptuning")
DEEP_PROMPTS = ("prefix",)
FAMILY = {**{k: "input prompt" for k in INPUT_PROMPTS}, **{k: "deep prompt" for k in DEEP_PROMPTS}}


def adapter_dir(init_from: str) -> Path:
    """`init_from` (a run directory or its adapter/) -> the adapter directory; one error line when absent.
    Cheap: run before any model loads."""
    from peftrun.methods.applied import CONFIG_NAME, WEIGHTS_NAME

    base = Path(init_from).expanduser()
    for candidate in (base / "adapter", base):
        if (candidate / CONFIG_NAME).is_file() and (candidate / WEIGHTS_NAME).is_file():
            return candidate
    raise PeftrunError(f"method.init_from={init_from}: no adapter ({CONFIG_NAME} + {WEIGHTS_NAME}) in it or in its "
                       "adapter/; point it to the run directory of a finished prompt-method run")


def _prompt_deltas(deltas: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(name, kind) for name, kind in deltas if kind in FAMILY]


def saved_deltas(config: dict[str, Any]) -> list[tuple[str, str]]:
    """(name, kind) of a saved method's deltas, in order (the names validate.py gives)."""
    from peftrun.methods.validate import parse_deltas

    return [(item.name, item.cls.kind) for item in parse_deltas(config["method"])]


def init_prompts_from(method: Any, init_from: str) -> dict[str, Any]:
    """Load the source run's prompts into `method` (an AppliedMethod); returns what was loaded, for the record."""
    from safetensors.torch import load_file

    from peftrun.methods.applied import CONFIG_NAME, WEIGHTS_NAME

    where = adapter_dir(init_from)
    config = json.loads((where / CONFIG_NAME).read_text())
    if config.get("format") != "peftrun":
        raise PeftrunError(f"method.init_from={init_from}: {where / CONFIG_NAME} is not a peftrun adapter")
    if config["family"] != method.anatomy.family:
        raise PeftrunError(f"method.init_from={init_from}: saved for a {config['family']} backbone, this run is "
                           f"{method.anatomy.family}; transfer prompts between runs of the same backbone")
    source = _prompt_deltas(saved_deltas(config))
    target = _prompt_deltas([(name, delta.kind) for name, delta in method.deltas.items()])
    if not target:
        raise PeftrunError(f"method.init_from is for prompt methods; {method.method['name']} has no prompt delta "
                           f"({', '.join(FAMILY)})")
    if len(source) != len(target):
        raise PeftrunError(f"method.init_from={init_from}: it saved {len(source)} prompt deltas, this method has "
                           f"{len(target)}; transfer between methods with the same prompts")
    tensors = load_file(str(where / WEIGHTS_NAME))
    loaded = {}
    for (src_name, src_kind), (name, kind) in zip(source, target, strict=True):
        if FAMILY[src_kind] != FAMILY[kind]:
            raise PeftrunError(f"method.init_from={init_from}: its {src_kind} ({FAMILY[src_kind]}) cannot start this "
                               f"method's {kind} ({FAMILY[kind]})")
        prefix = f"deltas.{src_name}."
        state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        delta = method.deltas[name]
        expected = {k: tuple(v.shape) for k, v in delta.saved_state_dict().items()}
        got = {k: tuple(v.shape) for k, v in state.items()}
        if got != expected:
            raise PeftrunError(f"method.init_from={init_from}: prompt shapes {got} do not match this method's "
                               f"{expected}; use the same prompt length, layers and backbone as the source run")
        delta.load_saved_state_dict(state)
        loaded[name] = {"from": f"{where}:{src_name}", "shapes": {k: list(s) for k, s in got.items()}}
    return loaded
