"""Mixing rates and the mixture sampler: which task each training example (or batch) comes from.

Rates (T5, Raffel et al. 2020 §3.5.2; UnifiedSKG): with n_i the (capped) training examples of task i,
    p_i = n_i^(1/T) / sum_j n_j^(1/T)
T = 1 is examples-proportional mixing, T -> inf equal mixing. An epoch draws as many examples as the mixture
holds (sum_i n_i), so with T > 1 small tasks repeat and large ones are subsampled within an epoch.

Order: everything the sampler yields comes from one generator seeded with seed + epoch (the convention of
peftrun/train.py's samplers, whose epoch `SamplerEpoch` sets from the trainer state), so the examples of step s in
epoch e are a function of (seed, epoch, s) alone: a killed mixture run resumes onto the same batches, and every
job of a sweep over mixtures or seeds is as resumable as a single-task run.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.utils.data import Sampler

from peftrun.errors import PeftrunError


def mixing_rates(sizes: list[int], temperature: float) -> list[float]:
    """p_i = n_i^(1/T) / sum_j n_j^(1/T) (module docstring); tasks with no example get 0."""
    if temperature <= 0:
        raise PeftrunError(f"task.mixture.temperature={temperature} must be > 0 (1 = proportional mixing)")
    weights = [n ** (1.0 / temperature) if n > 0 else 0.0 for n in sizes]
    total = sum(weights)
    if total == 0:
        raise PeftrunError("the mixture has no training example; check task.mixture.train and the members' data")
    return [w / total for w in weights]


class MixtureSampler(Sampler):
    """Dataset indices in mixture order (module docstring).

    groups: the task index of every dataset item (items of one task may sit anywhere in the dataset).
    homogeneous: draw one task per global batch (per-device batch x grad_accum x processes) and fill the batch
        from it, so every optimizer step sees one task (needed when tasks have different heads); else one draw
        per example. Within a task, items come in a fresh seeded permutation, cycled when used up.
    """

    def __init__(self, groups: list[int], rates: list[float], global_batch: int, seed: int,
                 homogeneous: bool) -> None:
        self.members = [[i for i, g in enumerate(groups) if g == t] for t in range(len(rates))]
        self.rates = rates
        self.global_batch = global_batch
        self.seed = seed
        self.homogeneous = homogeneous
        self.epoch = 0
        self.size = len(groups)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        if self.homogeneous:
            return math.ceil(self.size / self.global_batch) * self.global_batch
        return self.size

    def task_sequence(self, generator: torch.Generator) -> list[int]:
        """One task per draw (per batch when homogeneous)."""
        draws = len(self) // self.global_batch if self.homogeneous else self.size
        rates = torch.tensor(self.rates, dtype=torch.float64)
        return torch.multinomial(rates, draws, replacement=True, generator=generator).tolist()

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        tasks = self.task_sequence(generator)
        take = self.global_batch if self.homogeneous else 1
        needed = [tasks.count(t) * take for t in range(len(self.rates))]
        streams = []
        for members, count in zip(self.members, needed, strict=True):
            stream: list[int] = []
            while len(stream) < count:
                stream += [members[j] for j in torch.randperm(len(members), generator=generator).tolist()]
            streams.append(stream)
        used = [0] * len(self.rates)
        order = []
        for t in tasks:
            order += streams[t][used[t] : used[t] + take]
            used[t] += take
        return iter(order)


def with_mixture_sampler(trainer_class: type, groups: list[int], rates: list[float], homogeneous: bool) -> type:
    """`trainer_class` (a PeftrunTrainer) whose training sampler is a MixtureSampler over `groups`."""
    from peftrun.train import SamplerEpoch

    class MixtureTrainer(trainer_class):  # type: ignore[misc, valid-type]
        def _get_train_sampler(self, train_dataset: Any = None) -> MixtureSampler:
            args = self.args
            global_batch = args.train_batch_size * args.gradient_accumulation_steps * args.world_size
            sampler = MixtureSampler(groups, rates, global_batch, args.data_seed, homogeneous)
            self.remove_callback(SamplerEpoch)
            self.add_callback(SamplerEpoch(sampler))
            return sampler

    MixtureTrainer.__name__ = f"Mixture{trainer_class.__name__}"
    return MixtureTrainer
