"""The training state: everything a checkpoint saves and restores, and nothing else of the run.

trainer/runtime/checkpoint.py is handed a `TrainState` and nothing more: the method's parameters, the
optimiser and schedule, the step, the guard's count of skipped steps, the data order (a pure function of
(seed, step), so the step is its whole position) and the batch layout it was cut with. The RNG is the
process's own generators, which the checkpoint saves for every rank beside this state.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from trainer.data.batch import TrainOrder
from trainer.runtime.ds_config import BatchLayout
from trainer.runtime.guard import StepGuard


@dataclass
class TrainState:
    method: nn.Module
    """The module in the prompt slot (trainer/methods/registry.py): its state_dict is what trains (and, with a
    trained backbone, what is prepended to it)."""
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    guard: StepGuard
    """Agreement on skipped and stopping steps; its `skipped` count is part of the state."""
    order: TrainOrder
    """Which examples and which router noise each step uses (a `TrainOrder` or one of its variants)."""
    layout: BatchLayout
    """Micro batch x accumulation x world size of this run (a resumed run may differ from the checkpoint's)."""
    step: int = 0
    """Optimiser steps completed."""

    @property
    def trainable(self) -> list[nn.Parameter]:
        """The method's parameters that train (replicated fp32 unless the backbone trains)."""
        return [p for p in self.method.parameters() if p.requires_grad]
