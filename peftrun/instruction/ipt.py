"""Instruction prompt tuning (method=ipt; Singhal et al. 2022, Sun et al. 2023): a trainable soft prompt in
front of the instruction, the retrieved demonstrations and the query, i.e. prompt tuning on the prompts of the
prompt group (peftrun/prompting/): [soft prompt] + instruction + k demonstrations + query -> answer.

What differs from prompt tuning evaluated with demonstrations: training examples are built the same way
(method.train_with_demonstrations), each with k demonstrations retrieved from the training pool (never itself or
an exact duplicate), so the soft prompt learns to read demonstrations. The same retriever, order and token budget
apply to training and evaluation prompts.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from peftrun.errors import PeftrunError


def check_prompt_use(cfg: Any) -> None:
    """method.train_with_demonstrations needs demonstrations to train with; a mixture builds its members' prompts
    itself (task.mixture.templates; a prompt config's demonstrations would come from other members' training
    data). One error line each (cheap: config only)."""
    prompt = cfg.get("prompt")
    if cfg.task.name == "mixture" and prompt is not None:
        raise PeftrunError("task=mixture renders its members itself (task.mixture.templates=flan) and takes no "
                           "prompt config; use prompt=none (k-shot held-out evaluation: task.mixture.eval_shots=k)")
    if not cfg.method.train_with_demonstrations:
        return
    if prompt is None or prompt.k < 1:
        raise PeftrunError(f"method {cfg.method.name!r} trains with retrieved demonstrations "
                           "(method.train_with_demonstrations=true): add a prompt with demonstrations, e.g. "
                           "prompt=fewshot prompt.k=2")


def demonstrated_training_examples(cfg: Any, prompting: Any, backbone: Any, examples: list[Any],
                                   record: dict[str, Any]) -> list[Any]:
    """Training examples whose source is their full prompt (instruction + demonstrations + query under the
    template) and whose target is the rendered answer; the prompts' summary goes to
    record["data"]["<train split>_prompts"]; meta["demonstrations"] lists the ids each one shows."""
    from peftrun.formulations.text import build_prompted

    prompted, _ = build_prompted(cfg, prompting, backbone, examples, f"{cfg.task.train_split}_prompts", record)
    return [replace(p.example, source=p.prompt, target=p.target,
                    meta={**(p.example.meta or {}), "demonstrations": p.demonstrations}) for p in prompted]
