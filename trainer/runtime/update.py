"""How a step's gradients become an update: chosen once when the run is built, so the loop has one path.

- `ReplicatedUpdate`: the frozen-backbone methods. The method's parameters are fp32 and replicated on every
  rank: each micro batch's backward fills their .grad, one all-reduce sums them, the non-finite guard decides
  on every rank alike, then clip and a masked optimiser step (a skipped step changes nothing).
- `EngineUpdate`: full fine-tuning. DeepSpeed's engine owns the backbone's gradients and optimiser: it
  reduces, clips and steps at the accumulation boundary; non-finite steps are its loss scaler's business.
"""
from __future__ import annotations

import torch

from trainer.optim import masked_step
from trainer.runtime import distributed
from trainer.runtime.guard import StepGuard


class ReplicatedUpdate:
    trains_backbone = False

    def __init__(self, params: list[torch.nn.Parameter], optimizer, scheduler, guard: StepGuard,
                 max_grad_norm: float):
        self.params, self.optimizer, self.scheduler = params, optimizer, scheduler
        self.guard, self.max_grad_norm = guard, max_grad_norm

    def backward(self, loss: torch.Tensor, micro_batches_per_step: int) -> None:
        loss.backward()

    def step(self, step: int, step_loss: torch.Tensor) -> torch.Tensor:
        """All-reduce, gate, clip and step; returns the device bool `ok` (False: the step was skipped)."""
        distributed.all_reduce_grads(self.params)
        ok = self.guard.gate(step, step_loss, [p.grad for p in self.params if p.grad is not None])
        if self.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm)
        masked_step(self.optimizer, self.params, ok)
        self.scheduler.step()  # the learning rate stays a function of the step, skipped or not
        self.optimizer.zero_grad(set_to_none=True)
        return ok

    def log_backbone_norm(self, monitor, step: int) -> None:
        pass  # the backbone is frozen


class EngineUpdate:
    trains_backbone = True

    def __init__(self, engine):
        self.engine, self.optimizer, self.scheduler = engine, engine.optimizer, engine.lr_scheduler

    def backward(self, loss: torch.Tensor, micro_batches_per_step: int) -> None:
        distributed.engine_backward_step(self.engine, loss, micro_batches_per_step)

    def step(self, step: int, step_loss: torch.Tensor) -> torch.Tensor:
        # The engine has stepped at the last micro batch. No stop agreement either: full fine-tuning cannot
        # resume (checkpoints hold no backbone).
        return torch.ones((), dtype=torch.bool, device=step_loss.device)

    def log_backbone_norm(self, monitor, step: int) -> None:
        """The backbone's weight norm before and after training shows that it trained (collective)."""
        monitor.log({"event": "backbone", "step": step, "norm": distributed.norm(self.engine.parameters())})
