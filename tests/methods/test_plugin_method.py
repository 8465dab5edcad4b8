"""A method registered from outside trainer/ trains like a shipped one (README "Adding a method").

This file is both the test and the plug-in: run as a script it registers `toy` and hands over to the
trainer's own entry point, which is what a user's launcher script does:

    torchrun --nproc_per_node 2 tests/methods/test_plugin_method.py prompt.method=toy ...
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from trainer.methods.registry import InitContext, register
from trainer.methods.router import single_prompt

RANK = 2  # basis vectors per prompt


class LowRankPrompt(nn.Module):
    """One prompt of `length` tokens, each a learned mix of `rank` basis vectors: coef (length, rank) @ basis
    (rank, d). Input shape: embeds (batch, seq, d), mask (batch, seq). Output: (batch, length, d) fp32."""

    num_prompts, router = 1, None

    def __init__(self, d_model: int, length: int, rank: int = RANK):
        super().__init__()
        self.prompt_length = length
        self.coef = nn.Parameter(torch.full((length, rank), 1.0 / rank))
        self.basis = nn.Parameter(torch.randn(rank, d_model))

    def forward(self, embeds, mask, noise=None):
        prompt = self.coef @ self.basis  # (length, d)
        return prompt.expand(embeds.shape[0], -1, -1), single_prompt(embeds.shape[0], embeds.device)


def basis_from_vocab(module: LowRankPrompt, prompt, ctx: InitContext) -> None:
    """The basis starts as token embeddings (under ZeRO-3 calling the embedding is a collective)."""
    ids = torch.arange(3, 3 + module.basis.shape[0], device=ctx.device)
    with torch.no_grad():
        module.basis.copy_(ctx.embed(ids).float())


@register("toy", initialise=basis_from_vocab)
def build_toy(prompt, backbone_config) -> LowRankPrompt:
    return LowRankPrompt(backbone_config.d_model, prompt.prompt_length)


def test_the_registry_accepts_the_plug_in_in_process():
    from trainer.config import load_config
    from trainer.methods.registry import build_method, get_method

    p = load_config(None, ["prompt.method=toy", "prompt.prompt_length=3"]).prompt
    assert get_method("toy").prompt_length(p) == 3 and not get_method("toy").trains_backbone
    module = build_method(p, type("Config", (), {"d_model": 16})())
    prompts, routing = module(torch.zeros(2, 4, 16), torch.ones(2, 4))
    assert prompts.shape == (2, 3, 16) and routing.weights.shape == (2, 1)


@pytest.mark.multiprocess
def test_a_plug_in_method_trains_3_steps_on_2_ranks_like_on_1(tmp_path):
    import os
    import subprocess

    from safetensors.torch import load_file

    from tests.launch import REPO, TINY, command, events

    def train(nproc: int):
        out = tmp_path / f"ranks{nproc}"
        cmd = command(nproc, "python" if nproc == 1 else "torchrun")
        cmd[-1] = __file__  # this file, not trainer/main.py, is the entry point
        proc = subprocess.run(cmd + TINY + [f"output_dir={out}", "prompt.method=toy", "prompt.prompt_length=3",
                                            "train.max_steps=3", "train.check_replicas_every=1", "train.lr=0.05",
                                            "model.dropout=0", "train.global_batch_size=8"],
                              cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"},
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return out

    one, two = train(1), train(2)
    setup = events(two, "setup")[0]
    d_model = 32  # TINY's model.tiny.d_model
    assert setup["method"] == "toy" and setup["prompt_positions"] == 3
    assert setup["trainable_params"] == 3 * RANK + RANK * d_model
    assert [e["step"] for e in events(two, "train")] == [1, 2, 3]
    checks = events(two, "replica_check")
    assert len(checks) == 3 and all(c["identical"] and c["dtypes"] == ["float32"] for c in checks)
    # The same global batch on 2 ranks or 1: the same losses and the same trained prompt.
    for a, b in zip(events(one, "train"), events(two, "train")):
        assert abs(a["loss"] - b["loss"]) < 1e-4 * max(1.0, abs(a["loss"]))
    final_one, final_two = (load_file(str(out / "method_final.safetensors")) for out in (one, two))
    assert set(final_two) == {"coef", "basis"}
    torch.testing.assert_close(final_one["coef"], final_two["coef"], rtol=1e-4, atol=1e-5)
    assert not torch.allclose(final_two["coef"], torch.full((3, RANK), 1.0 / RANK))  # it trained
    assert not (two / "adapter").exists()  # prompt_bank is off for it


if __name__ == "__main__":
    from trainer.main import cli

    cli()
