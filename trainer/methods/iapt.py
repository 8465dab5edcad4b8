"""IAPT: Instruction-Aware Prompt Tuning (Zhu et al., ACL 2024), docs/method.md §6 (T5) and §10 (causal LMs).

Before every layer that carries the prompt positions (T5: each encoder block; a causal LM: each decoder layer,
as the paper defines it on LLaMA-2) a small generator reads the hidden states of the real input tokens (the
instruction, never the target) and writes n (default 4) soft tokens at the n positions reserved at the front
of the sequence. The prompts are generated per input instead of stored, so IAPT fits into the prompt slot of
`PromptedModel` only as n zero placeholders; the generators run inside forward pre-hooks on the layers. In
generation with a KV cache the soft tokens are written once, in the prefill, and stay in the cache: a hook
on a layer whose cache already holds positions does nothing. The hooks are installed before DeepSpeed wraps
the backbone and do not call any backbone submodule, so the module call order that ZeRO-3 records stays the
same on every rank and every step (tests/methods/test_methods_distributed.py checks the hooks fire under
ZeRO-3 on 2 ranks).
"""
from __future__ import annotations

import torch
from torch import nn

from trainer.methods.router import Routing, single_prompt

# Coefficients of R(x) = (sum_j a_j x^j) / (1 + |sum_i b_i x^i|) fitted once, offline, to GELU (erf form)
# by least squares on 5,001 points of [-5, 5] (linearised solve, then L-BFGS on the true objective):
# max |R - GELU| = 0.0036 there. Outside that range a (6, 5) rational cannot follow GELU's two asymptotes,
# which is why the generator normalises its input (see PromptGenerator).
GELU_NUMERATOR = (-0.00357693, 0.50079084, 0.41304657, 0.09511726, -0.00395758, -0.00380666, -0.00034235)
GELU_DENOMINATOR = (0.00050696, 0.18896085, 0.00151014, -0.00810697, 4.849e-05)


class Rational(nn.Module):
    """Learned rational activation (Molina et al.'s "safe" Padé unit), initialised to approximate GELU."""

    def __init__(self):
        super().__init__()
        self.numerator = nn.Parameter(torch.tensor(GELU_NUMERATOR, dtype=torch.float32))  # a_0..a_6
        self.denominator = nn.Parameter(torch.tensor(GELU_DENOMINATOR, dtype=torch.float32))  # b_1..b_5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = torch.zeros_like(x)
        for a in reversed(self.numerator):  # Horner
            p = p * x + a
        q = torch.zeros_like(x)
        for b in reversed(self.denominator):
            q = (q + b) * x  # sum_{i>=1} b_i x^i: no constant term
        return p / (1 + q.abs())


class PromptGenerator(nn.Module):
    """One layer's generator: hidden states of the real tokens -> n prompt vectors.

    Args:
        d_model: width d.
        bottleneck: m.
        num_tokens: n soft tokens written (4 in the paper).

    Input shape: hidden (batch, seq, d) of the input tokens (prompt positions excluded), mask (batch, seq).
    Output shape: (batch, n, d) fp32.
    """

    def __init__(self, d_model: int, bottleneck: int, num_tokens: int = 4):
        super().__init__()
        self.down = nn.Linear(d_model, bottleneck)  # W_down, b
        self.queries = nn.Linear(bottleneck, num_tokens, bias=False)  # W_sa: one learned query per token
        self.act = Rational()
        self.up = nn.Linear(bottleneck, d_model, bias=False)  # W_up
        # Zero output at init: training starts from the frozen model with n null positions.
        nn.init.zeros_(self.up.weight)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = hidden.float()
        # RMS-normalise (no parameters) as T5 does before each sublayer: the residual stream grows by orders
        # of magnitude through the layers, and the rational activation is GELU-like only on a bounded range.
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)
        xd = self.down(h)  # (batch, seq, m)
        scores = self.queries(xd).masked_fill(~mask.bool().unsqueeze(-1), float("-inf"))  # (batch, seq, n)
        attn = scores.softmax(dim=1)  # over the sequence, pads get 0
        pooled = attn.transpose(1, 2) @ xd  # (batch, n, m)
        return self.up(self.act(pooled))  # (batch, n, d)


class IAPT(nn.Module):
    """Per-layer prompt generators for `num_layers` layers (a T5 encoder's blocks, a causal LM's layers).

    Used in the prompt slot of `PromptedModel`: forward returns n zero placeholders to prepend (and remembers
    the input mask for the hooks); `attach` installs the hooks that overwrite those n positions before
    every layer.

    Input shape: embeds (batch, seq, d), mask (batch, seq). Output: (batch, n, d) zeros and a `Routing`
    with one slot (IAPT has no router).
    """

    num_prompts = 1  # routing slots, for the loop's routing statistics

    def __init__(self, d_model: int, num_layers: int, bottleneck: int = 32, num_tokens: int = 4):
        super().__init__()
        self.d_model, self.prompt_length = d_model, num_tokens
        self.generators = nn.ModuleList(PromptGenerator(d_model, bottleneck, num_tokens) for _ in range(num_layers))
        self._mask = None

    def forward(self, embeds: torch.Tensor, mask: torch.Tensor,
                noise: torch.Tensor | None = None) -> tuple[torch.Tensor, Routing]:
        # The hooks only see a layer's inputs, not which positions are the input's real tokens: keep the mask
        # for them. It covers the positions right after the prompt (the input as the family places it).
        self._mask = mask
        placeholders = embeds.new_zeros(embeds.shape[0], self.prompt_length, self.d_model, dtype=torch.float32)
        return placeholders, single_prompt(embeds.shape[0], embeds.device)

    def attach(self, layers) -> list:
        """Register a forward pre-hook on each layer carrying the prompt positions; returns the hook handles."""
        if len(layers) != len(self.generators):
            raise ValueError(f"IAPT has {len(self.generators)} generators for {len(layers)} layers")
        return [layer.register_forward_pre_hook(self._hook(i), with_kwargs=True) for i, layer in enumerate(layers)]

    def _hook(self, i: int):
        n = self.prompt_length

        def write_prompts(layer, args, kwargs):
            cache = kwargs.get("past_key_values")
            if cache is not None and cache.get_seq_length(i) > 0:
                return None  # a decoding step: the soft tokens were written in the prefill and sit in the cache
            hidden = args[0] if args else kwargs["hidden_states"]  # (batch, n + S [+ T], d)
            # Real input tokens only: the mask covers the input's positions; a causal LM's target positions
            # after them are zeros, so the generator never reads the target.
            mask = self._mask.new_zeros(hidden.shape[0], hidden.shape[1] - n)
            mask[:, : self._mask.shape[1]] = self._mask
            prompts = self.generators[i](hidden[:, n:], mask)  # (batch, n, d)
            hidden = torch.cat([prompts.to(hidden.dtype), hidden[:, n:]], dim=1)
            return ((hidden, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": hidden})

        return write_prompts


def num_params(d_model: int, num_layers: int, bottleneck: int = 32, num_tokens: int = 4) -> int:
    """2*d*m per layer plus the down bias (m), the queries (n*m) and the 12 rational coefficients."""
    m = bottleneck
    return num_layers * (2 * d_model * m + m + num_tokens * m + len(GELU_NUMERATOR) + len(GELU_DENOMINATOR))
