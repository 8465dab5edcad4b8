"""Full fine-tuning's prompt slot: nothing is prepended, the backbone itself trains (docs/method.md §5)."""
from __future__ import annotations

import torch
from torch import nn

from trainer.methods.router import Routing, single_prompt


class NoPrompt(nn.Module):
    """Prepends nothing: a zero-length prompt, and every example counted on the one routing slot.

    Input shape: embeds (batch, seq, d). Output shape: (batch, 0, d) and a one-slot `Routing`."""

    num_prompts, prompt_length, router = 1, 0, None

    def __init__(self, d_model: int):
        super().__init__()
        self.d_model = d_model

    def forward(self, embeds: torch.Tensor, mask: torch.Tensor, noise=None) -> tuple[torch.Tensor, Routing]:
        return embeds.new_zeros(embeds.shape[0], 0, self.d_model), single_prompt(embeds.shape[0], embeds.device)
