"""Optimisers and learning-rate schedules for the (small, replicated, fp32) trainable parameters."""
from __future__ import annotations

import torch
from transformers.optimization import Adafactor

from trainer.config import OptimizerName, Schedule, TrainConfig


def build_optimizer(params: list[torch.nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW, or Adafactor as the SMoP and prompt-tuning papers ran it.

    The parameters are the real tensors (the [k, l, d] prompt bank, the [k, d] router), not flat ZeRO
    shards, so Adafactor's factored second moment and per-tensor update clipping mean what they should.
    """
    if cfg.optimizer == OptimizerName.ADAFACTOR:
        return Adafactor(params, lr=cfg.lr, weight_decay=cfg.weight_decay, scale_parameter=False,
                         relative_step=False, warmup_init=False)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


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
