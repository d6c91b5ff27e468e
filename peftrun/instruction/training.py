"""What a mixture changes in training (called from experiment.py): the sampler, and one head per task."""

from __future__ import annotations

from typing import Any

from peftrun.errors import PeftrunError


def mixture_trainer(task: Any, trainer_class: type, extra: dict[str, Any], n_items: int,
                    record: dict[str, Any]) -> tuple[type, dict[str, Any]]:
    """(trainer class, extra kwargs) for training `task` (a MixtureTask) on `n_items` dataset items; writes the
    members' sizes and rates into record["mixture"]."""
    from peftrun.instruction.mixing import mixing_rates, with_mixture_sampler

    mix = task.cfg.mixture
    if n_items != len(task.groups):
        raise PeftrunError(f"task=mixture: {n_items} training items for {len(task.groups)} examples (examples "
                           "without a gold label?); train only on members whose examples all have one")
    sizes = [task.sizes[name] for name in task.train_names]
    rates = mixing_rates(sizes, mix.temperature)
    record["mixture"] = {
        "temperature": mix.temperature, "max_per_task": mix.max_per_task,
        "train": {name: {"examples": n, "rate": round(p, 6)} for name, n, p in zip(task.train_names, sizes, rates,
                                                                                  strict=True)},
        "eval": list(task.eval_names),
    }
    homogeneous = mix.homogeneous
    if "head" in extra:  # one head per task: its own columns, and every batch from one task
        from peftrun.instruction.multitask_head import MultiTaskHeadTrainer, column_tasks

        trainer_class, extra = MultiTaskHeadTrainer, {**extra, "owner": column_tasks(task)}
        homogeneous = True
    record["mixture"]["homogeneous_batches"] = homogeneous
    return with_mixture_sampler(trainer_class, task.groups, rates, homogeneous), extra
