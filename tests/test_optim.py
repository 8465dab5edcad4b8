"""Optimisers see the real prompt and router tensors; the schedule warms up, then decays."""
import pytest
import torch

from trainer.config import load_config
from trainer.optim import build_optimizer, build_scheduler
from trainer.smop import SMoP


def test_adafactor_factors_the_real_tensors():
    smop = SMoP(16, 4, 5)
    cfg = load_config(None, ["train.optimizer=adafactor"]).train
    opt = build_optimizer(list(smop.parameters()), cfg)
    prompts, _ = smop(torch.randn(3, 6, 16), torch.ones(3, 6), torch.randn(3, 4))
    prompts.pow(2).sum().backward()
    opt.step()
    state = opt.state[smop.prompts]
    # Factored second moment over the last two dims of [k, l, d]: impossible on ZeRO's flat 1-D shards.
    assert state["exp_avg_sq_row"].shape == (4, 5) and state["exp_avg_sq_col"].shape == (4, 16)
    assert opt.state[smop.router.proj.weight]["exp_avg_sq_row"].shape == (4,)
    group = opt.param_groups[0]
    assert not group["relative_step"] and not group["scale_parameter"] and group["weight_decay"] == 1e-5


def test_linear_warmup_then_decay_and_constant():
    p = [torch.nn.Parameter(torch.zeros(1))]
    cfg = load_config(None, ["train.max_steps=100", "train.warmup_ratio=0.1", "train.lr=1.0"]).train
    sched = build_scheduler(build_optimizer(p, cfg), cfg)
    rates = []
    for _ in range(100):
        rates.append(sched.get_last_lr()[0])
        sched.step()
    assert rates[0] == pytest.approx(0.1) and rates[9] == pytest.approx(1.0)
    assert rates[10] == pytest.approx(1.0) and rates[55] == pytest.approx(0.5) and rates[99] == pytest.approx(1 / 90)
    cfg = load_config(None, ["train.max_steps=10", "train.warmup_ratio=0", "train.schedule=constant"]).train
    sched = build_scheduler(build_optimizer(p, cfg), cfg)
    for _ in range(10):
        assert sched.get_last_lr()[0] == cfg.lr
        sched.step()
