"""Optimisers see the real prompt and router tensors; the schedule warms up, then decays."""
import pytest
import torch

from trainer.config import load_config
from trainer.optim import build_optimizer, build_scheduler, masked_step
from trainer.methods.smop import SMoP


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


def _state(model, opt) -> list:
    """Parameters and every optimiser state value, as comparable plain values."""
    out = []
    for p in model.parameters():
        out.append(p.detach().clone())
        out += [v.clone() if torch.is_tensor(v) else v for _, v in sorted(opt.state[p].items())]
    return out


def _same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) if torch.is_tensor(x) else x == y for x, y in zip(a, b))


@pytest.mark.parametrize("optimizer", ["adamw", "adafactor"])
def test_masked_step_is_a_step_or_exactly_nothing(optimizer, monkeypatch):
    """ok=False leaves parameters and every state value bit-identical (AdamW: decided on the device; Adafactor,
    whose step count is a Python int: on the host); ok=True equals a plain step, also after skipped steps."""
    cfg = load_config(None, [f"train.optimizer={optimizer}", "train.lr=0.1"]).train
    torch.manual_seed(0)
    masked, plain = SMoP(16, 4, 5), SMoP(16, 4, 5)
    plain.load_state_dict(masked.state_dict())
    opt_m, opt_p = build_optimizer(list(masked.parameters()), cfg), build_optimizer(list(plain.parameters()), cfg)
    for seed, ok in enumerate([False, True, True, False, True, False, False, True]):
        for model in (masked, plain):
            torch.manual_seed(seed)
            prompts, _ = model(torch.randn(3, 6, 16), torch.ones(3, 6), torch.randn(3, 4))
            prompts.pow(2).sum().backward()
        before = _state(masked, opt_m)
        with monkeypatch.context() as m:
            if optimizer == "adamw" and any(opt_m.state.values()):  # once the state exists the host must not read ok
                m.setattr(torch.Tensor, "__bool__", lambda t: pytest.fail("ok read on the host"))
            masked_step(opt_m, list(masked.parameters()), torch.tensor(ok))
        if ok:
            opt_p.step()
        assert _same(_state(masked, opt_m), _state(plain, opt_p)), seed
        assert _same(_state(masked, opt_m), before) != ok, seed
        opt_m.zero_grad()
        opt_p.zero_grad()
