"""P-tuning's prompt encoder (Liu et al. 2021): the prompts are the output of a small network applied to
l learned input vectors, rather than free parameters.

It plugs into `SMoP` as its `encoder`: the stored [k, l, d] tensor becomes the encoder's input and the
encoder's output is the prompt bank, so P-tuning is SMoP with k = 1, no router and this reparameterisation
(docs/method.md §4). Only the prompts it produces reach the backbone; at inference the encoder can be run once
and dropped.
"""
from __future__ import annotations

import torch
from torch import nn

from trainer.choice import Choice



class PTuningEncoder(Choice):
    """P-tuning encoder: the network that maps learned inputs to the prompts."""

    MLP = "mlp"
    LSTM = "lstm"


class PromptEncoder(nn.Module):
    """Maps learned inputs (k, l, d) to prompts (k, l, d).

    Args:
        d_model: backbone width d.
        hidden: width h (128 in the SMoP paper's P-tuning baseline).
        kind: 'mlp': Linear(d,h)-ReLU-Linear(h,h)-ReLU-Linear(h,d), each position on its own;
            'lstm': a 2-layer bidirectional LSTM (h/2 per direction) over the l positions, then the head
            Linear(h,h)-ReLU-Linear(h,d), as in the P-tuning release.

    Input shape: (k, l, d) fp32. Output shape: (k, l, d) fp32.
    """

    def __init__(self, d_model: int, hidden: int = 128, kind: str = "mlp"):
        super().__init__()
        kind = PTuningEncoder(kind)
        if kind == PTuningEncoder.LSTM and hidden % 2:
            raise ValueError(f"prompt.ptuning_hidden={hidden}: the bidirectional LSTM needs an even width")
        self.kind = kind
        self.lstm = None
        if kind == PTuningEncoder.LSTM:
            self.lstm = nn.LSTM(d_model, hidden // 2, num_layers=2, bidirectional=True, batch_first=True)
            self.head = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, d_model))
        else:
            self.head = nn.Sequential(nn.Linear(d_model, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                      nn.Linear(hidden, d_model))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.lstm is not None:
            inputs, _ = self.lstm(inputs)  # (k, l, h): each prompt's l positions form one sequence
        return self.head(inputs)  # (k, l, d)


def num_params(d_model: int, prompt_length: int, hidden: int = 128, kind: str = "mlp") -> int:
    """Trainable parameters of P-tuning with one prompt, counted from the shapes (no tensors built)."""
    inputs = prompt_length * d_model
    if kind == "mlp":
        return inputs + (d_model * hidden + hidden) + (hidden * hidden + hidden) + (hidden * d_model + d_model)
    half = hidden // 2
    # Per direction and layer: 4 gates x (input x half + half x half + 2 biases of half).
    lstm = 2 * 4 * (d_model * half + half * half + 2 * half) + 2 * 4 * (hidden * half + half * half + 2 * half)
    return inputs + lstm + (hidden * hidden + hidden) + (hidden * d_model + d_model)
