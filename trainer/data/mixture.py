"""Multi-task training order: which task, and which of its examples, fills each slot of a global batch.

`data.mixing=proportional` needs nothing new: `TrainOrder` shuffles the union of the tasks' examples, so
task i fills a share n_i / N of every epoch exactly. `data.mixing=temperature` is T5's temperature-scaled
mixing (Raffel et al. 2020, section 3.5.2): each slot draws task i with probability
r_i = n_i^(1/T) / sum_j n_j^(1/T), and takes that task's next example from its own shuffled epochs, so
small tasks repeat more often than under proportional mixing and large ones less.

Like `TrainOrder`, everything is a function of (seed, step): the tasks of step s come from a generator
seeded by (seed, s), and how far each task's epochs have advanced is the count of its draws in steps
0..s-1. A resumed run (or another world size) therefore sees the same global batches.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from trainer.choice import Choice
from trainer.data.batch import Encoded, LengthGroupedOrder, TrainOrder

if TYPE_CHECKING:
    from trainer.config import DataConfig


class Mixing(Choice):
    """mixing: how a multi-task mixture samples its tasks."""

    PROPORTIONAL = "proportional"
    TEMPERATURE = "temperature"


def mixing_rates(sizes: list[int], mixing: Mixing, temperature: float) -> list[float]:
    """Sampling rate of each task: n_i / N (proportional) or n_i^(1/T) normalised (temperature)."""
    power = 1.0 if mixing == Mixing.PROPORTIONAL else 1.0 / temperature
    weights = [float(n) ** power for n in sizes]
    return [w / sum(weights) for w in weights]


class MixtureOrder(TrainOrder):
    """`TrainOrder` whose global batches are drawn task by task at fixed rates.

    Args:
        task_ids: the task index of every training example (examples of a task need not be contiguous).
        rates: sampling rate of each task (sums to 1); see `mixing_rates`.
        global_batch: examples per optimiser step over all ranks.
        seed: run seed.
    """

    def __init__(self, task_ids: list[int], rates: list[float], global_batch: int, seed: int):
        super().__init__(len(task_ids), global_batch, seed)
        self.rates = rates
        self.members = [[i for i, t in enumerate(task_ids) if t == task] for task in range(len(rates))]
        for task, members in enumerate(self.members):
            if not members and rates[task] > 0:
                raise ValueError(f"task {task} of the mixture has no training examples")
        # Draws of each task in steps 0..._done_step-1; advanced step by step and reset on a jump back.
        self._done_step, self._done = 0, [0] * len(rates)
        self._task_perm: dict[int, tuple[int, list[int]]] = {}

    def step_tasks(self, step: int) -> list[int]:
        """The task of every slot of step `step`'s global batch."""
        gen = torch.Generator().manual_seed(self.seed * 1_000_033 + step)
        return torch.multinomial(torch.tensor(self.rates, dtype=torch.float64), self.global_batch,
                                 replacement=True, generator=gen).tolist()

    def global_indices(self, step: int) -> list[int]:
        """Dataset indices of the global batch of optimiser step `step` (0-based)."""
        done = list(self._draws_before(step))
        out = []
        for task in self.step_tasks(step):
            epoch, offset = divmod(done[task], len(self.members[task]))
            out.append(self.members[task][self._task_permutation(task, epoch)[offset]])
            done[task] += 1
        return out

    def _draws_before(self, step: int) -> list[int]:
        if step < self._done_step:
            self._done_step, self._done = 0, [0] * len(self.rates)
        while self._done_step < step:
            for task in self.step_tasks(self._done_step):
                self._done[task] += 1
            self._done_step += 1
        return self._done

    def _task_permutation(self, task: int, epoch: int) -> list[int]:
        cached = self._task_perm.get(task)
        if cached is None or cached[0] != epoch:
            gen = torch.Generator().manual_seed((self.seed * 1_000_003 + task) * 7919 + epoch)
            cached = (epoch, torch.randperm(len(self.members[task]), generator=gen).tolist())
            self._task_perm[task] = cached
        return cached[1]


def build_order(cfg: DataConfig, data: Encoded, num_tasks: int, global_batch: int, seed: int):
    """The training order `data.mixing` and `data.group_by_length` ask for (plain `TrainOrder` by default)."""
    task_ids = data.task_ids
    if num_tasks > 1 and cfg.mixing == Mixing.TEMPERATURE:
        sizes = [task_ids.count(t) for t in range(num_tasks)]
        order = MixtureOrder(task_ids, mixing_rates(sizes, cfg.mixing, cfg.temperature), global_batch, seed)
    else:
        order = TrainOrder(len(task_ids), global_batch, seed)
    if cfg.group_by_length:
        return LengthGroupedOrder(order, [len(ids) for ids in data.input_ids], cfg.group_by_length)
    return order
