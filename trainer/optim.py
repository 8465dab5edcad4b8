"""Optimisers and learning-rate schedules for the (small, replicated, fp32) trainable parameters."""
from __future__ import annotations

import torch
from transformers.optimization import Adafactor

from trainer.config import OptimizerName, Schedule, TrainConfig


def build_optimizer(params: list[torch.nn.Parameter], cfg: TrainConfig,
                    router: list[torch.nn.Parameter] = ()) -> torch.optim.Optimizer:
    """AdamW, or Adafactor as the SMoP and prompt-tuning papers ran it.

    The parameters are the real tensors (the [k, l, d] prompt bank, the [k, d] router), not flat ZeRO
    shards, so Adafactor's factored second moment and per-tensor update clipping mean what they should.
    `router` (a subset of params) gets a parameter group of its own at train.router_lr when that is set;
    the schedule scales both groups alike.
    """
    groups = params
    if cfg.router_lr > 0 and router:
        mine = {id(p) for p in router}
        groups = [{"params": [p for p in params if id(p) not in mine]}, {"params": list(router), "lr": cfg.router_lr}]
    if cfg.optimizer == OptimizerName.ADAFACTOR:
        return Adafactor(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, scale_parameter=False,
                         relative_step=False, warmup_init=False)
    # fused keeps AdamW's step counter on the GPU, so masked_step can undo a step without the host.
    fused = params[0].device.type == "cuda" or None
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)


@torch.no_grad()
def masked_step(optimizer: torch.optim.Optimizer, params: list[torch.nn.Parameter], ok: torch.Tensor) -> None:
    """optimizer.step() where the device bool `ok` holds, no change at all where it does not.

    The parameters and every optimiser state tensor are copied before the step and put back where `ok` is
    False, so the host never reads `ok` (reading it would wait for the whole step). The trainable tensors
    are small: the copies cost little. Where some state is not a tensor on `ok`'s device (before the first
    step; transformers' Adafactor counts steps in a Python int) the host reads `ok` instead.
    """
    params = [p for p in params if p.grad is not None]
    started = all(optimizer.state.get(p) for p in params)
    state = [v for p in params for v in optimizer.state.get(p, {}).values()]
    if not started or not all(torch.is_tensor(v) and v.device == ok.device for v in state):
        if bool(ok):
            optimizer.step()
        return
    tensors = params + state
    before = [t.clone() for t in tensors]
    optimizer.step()
    for t, old in zip(tensors, before):
        t.copy_(torch.where(ok, t, old))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over warmup_ratio * max_steps, then linear decay to 0 or constant."""
    warmup = int(cfg.warmup_ratio * cfg.max_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if cfg.schedule == Schedule.CONSTANT:
            return 1.0
        return max(0.0, (cfg.max_steps - step) / max(1, cfg.max_steps - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
