"""SMoP: a bank of k soft prompts of l tokens and the router that picks one per example.

Prompt tuning is the same module with k = 1 and no router; P-tuning is k = 1 with a prompt encoder that
reparameterises the bank (trainer/methods/ptuning.py). The module knows nothing of DeepSpeed: it
receives the frozen input embeddings and returns the prompt embeddings to prepend to them.
"""
from __future__ import annotations

import torch
from torch import nn

from trainer.choice import Choice
from trainer.methods.router import Router, Routing, single_prompt


class PromptInit(Choice):
    """prompt init: how the bank starts (see `init_prompts`)."""

    NORMAL = "normal"
    UNIFORM = "uniform"
    VOCAB = "vocab"
    TEXT = "text"


def masked_mean(embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over real tokens. embeds (batch, seq, d), mask (batch, seq) -> (batch, d) fp32."""
    mask = mask.to(torch.float32).unsqueeze(-1)  # (batch, seq, 1)
    return (embeds.float() * mask).sum(1) / mask.sum(1).clamp(min=1.0)


class SMoP(nn.Module):
    """k prompts ([k, l, d], fp32) and a router over them.

    Args:
        d_model: backbone width d.
        num_prompts: k (1: prompt tuning, no router).
        prompt_length: l.
        routing / top_k / noise_scale / gumbel_temperature / balance_coef / centered: see `Router`.
        encoder: optional module mapping the stored [k, l, d] tensor to the prompts actually used (P-tuning);
            None: the stored tensor is the prompt bank.

    Input shape: embeds (batch, seq, d) frozen input embeddings, mask (batch, seq), noise (batch, k) or None.
    Output shape: prompts (batch, l, d) fp32, and the `Routing` of the batch.
    """

    def __init__(self, d_model: int, num_prompts: int = 4, prompt_length: int = 5, routing: str = "smop",
                 top_k: int = 2, noise_scale: float = 1.0, gumbel_temperature: float = 1.0,
                 balance_coef: float = 0.0, encoder: nn.Module | None = None, centered: bool = False):
        super().__init__()
        self.num_prompts, self.prompt_length, self.d_model = num_prompts, prompt_length, d_model
        # One [k, l, d] tensor indexed per example: the same ops run on every rank whatever the routing,
        # which ZeRO-3 needs (data-dependent submodule calls desynchronise its parameter gathering).
        self.prompts = nn.Parameter(torch.empty(num_prompts, prompt_length, d_model, dtype=torch.float32))
        nn.init.normal_(self.prompts)  # the official code's init: torch's embedding default N(0, 1)
        self.encoder = encoder
        self.router = None
        if num_prompts > 1:
            self.router = Router(d_model, num_prompts, routing, top_k, noise_scale, gumbel_temperature,
                                 balance_coef, centered)

    def forward(self, embeds: torch.Tensor, mask: torch.Tensor,
                noise: torch.Tensor | None = None) -> tuple[torch.Tensor, Routing]:
        batch = embeds.shape[0]
        if self.router is None:
            routing = single_prompt(batch, embeds.device)
        else:
            routing = self.router(masked_mean(embeds, mask), noise)
        bank = self.prompts if self.encoder is None else self.encoder(self.prompts)  # (k, l, d)
        prompts = torch.einsum("bk,kld->bld", routing.weights, bank)  # (batch, l, d)
        return prompts, routing


def init_prompts(smop: SMoP, how: PromptInit | str, embed: nn.Module | None = None, token_ids: torch.Tensor | None = None,
                 generator: torch.Generator | None = None) -> None:
    """Initialise the prompt bank in place.

    how: 'normal' N(0, 1); 'uniform' U[-0.5, 0.5] (Lester et al.); 'vocab' or 'text': the embeddings of
    `token_ids` ((k, l) ids, chosen by the caller) looked up through the embedding module `embed`. Calling the
    module, rather than reading its weight, is what lets ZeRO-3 gather a partitioned embedding matrix; every
    rank must call it with the same ids.
    """
    how = PromptInit(how)
    with torch.no_grad():
        # Drawn on the CPU, where `generator` lives (a CPU generator cannot fill a CUDA tensor), then copied:
        # the same values on every device.
        if how == PromptInit.NORMAL:
            smop.prompts.copy_(torch.empty(smop.prompts.shape).normal_(generator=generator))
        elif how == PromptInit.UNIFORM:
            smop.prompts.copy_(torch.empty(smop.prompts.shape).uniform_(-0.5, 0.5, generator=generator))
        else:  # vocab, text
            values = embed(token_ids.to(_device_of(embed)))  # (k, l, d)
            smop.prompts.copy_(values.float().to(smop.prompts.device))


def _device_of(module: nn.Module) -> torch.device:
    return next(iter(module.parameters())).device
