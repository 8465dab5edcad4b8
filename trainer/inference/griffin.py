"""GRIFFIN for T5 (docs/method.md §7): per-example feed-forward neuron selection in the decoder.

Within one sequence the FF neurons that fire strongly are nearly the same at every position ("flocking").
GRIFFIN (Dong, Chen, Chi 2024) therefore measures, per FF layer, s_j = sqrt(sum_t (Z_tj / ||Z_t||_2)^2) over
a prompt and keeps the top rho fraction of neurons for the rest of generation. Z (tokens x d_ff) is the input
of `wo`: act(wi x) for T5 v1.0 (T5DenseActDense) and act(wi_0 x) * (wi_1 x) for v1.1 (T5DenseGatedActDense).

T5 differences from the released code (decoder-only, batch 1):
- Only the decoder's FF is pruned: the encoder runs once per input and would gain nothing.
- The T5 decoder has no multi-token prompt, so the statistic is collected over its first `window` positions
  (W decoding steps, run with the full FF); positions W, W+1, ... use the pruned FF. Teacher-forced scoring
  of a whole target follows the same rule position by position, so it matches generation exactly.
- Selection is per example: the statistic is summed over the example's beams (rows b*num_beams ...
  (b+1)*num_beams - 1, the order `generate` expands inputs in), which is invariant to the beam reordering
  done at every step, and an example's output does not depend on its batch.

Selectors for comparison: 'flocking' (GRIFFIN), 'magnitude' (static: ||wi_j|| * ||wo_j||, or
||wi_0_j|| * ||wi_1_j|| * ||wo_j|| when gated; the same neurons for every input), 'random' (a seeded random
subset per layer, the same for every input). Single device only: the pruned path reads weights directly,
which a ZeRO-3 partitioned backbone does not allow.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

SELECTORS = ("flocking", "magnitude", "random")


class GriffinFF(nn.Module):
    """Drop-in for a T5 decoder layer's `DenseReluDense`: full FF for the first `window` positions (collecting
    the flocking statistic), then the per-example pruned FF.

    Input shape: (rows, T, d) with rows = examples x num_beams; positions count on across calls (one call
    per decoding step in generation, one call for a whole target in teacher-forced scoring).
    Output shape: (rows, T, d).
    """

    def __init__(self, dense: nn.Module, rho: float, window: int, num_beams: int = 1, selector: str = "flocking",
                 generator: torch.Generator | None = None):
        super().__init__()
        if not 0 < rho <= 1:
            raise ValueError(f"griffin rho={rho}: must lie in (0, 1]")
        if window < 1:
            raise ValueError(f"griffin window={window}: must be at least 1 (the statistic needs a position)")
        if selector not in SELECTORS:
            raise ValueError(f"griffin selector '{selector}': known {', '.join(SELECTORS)}")
        self.dense, self.rho, self.window, self.num_beams, self.selector = dense, rho, window, num_beams, selector
        self.generator = generator
        self.gated = hasattr(dense, "wi_0")
        self.d_ff = dense.wo.weight.shape[1]
        self.keep_count = max(1, int(rho * self.d_ff))  # floor(rho * D)
        self.seen = 0  # decoder positions processed so far
        self.stat = None  # (examples, d_ff) running sum of squared normalised activations
        self.keep = None  # (examples, K) kept neuron indices, ascending
        self._weights = None  # gathered (w_in..., w_out) per example

    def activations(self, x: torch.Tensor) -> torch.Tensor:
        """Z, the input of wo: (rows, T, d) -> (rows, T, d_ff), computed exactly as the wrapped module does."""
        d = self.dense
        if self.gated:
            return d.act(d.wi_0(x)) * d.wi_1(x)
        return d.act(d.wi(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.shape[1]
        full = max(0, min(t, self.window - self.seen))  # positions still inside the window
        self.seen += t
        if full:
            # A call that straddles the window (teacher-forced scoring) runs both FFs on every position and
            # keeps each one's part: same shapes as the unpruned call, so rho = 1 stays bit-identical.
            z = self.activations(x)  # (rows, T, d_ff)
            self._accumulate(z[:, :full])
            z = self.dense.dropout(z)
            if z.dtype != self.dense.wo.weight.dtype:  # as the wrapped module (wo may be kept in fp32)
                z = z.to(self.dense.wo.weight.dtype)
            out = self.dense.wo(z)
            if full == t:
                return out
        if self.keep is None:
            self._select()
        pruned = self._pruned(x)
        return pruned if not full else torch.cat([out[:, :full], pruned[:, full:]], dim=1)

    def _accumulate(self, z: torch.Tensor) -> None:
        rows, t, dff = z.shape
        z = z.float()
        normed = z / z.norm(dim=-1, keepdim=True).clamp(min=1e-12)  # Z_t / ||Z_t||
        per_example = normed.pow(2).reshape(rows // self.num_beams, self.num_beams * t, dff).sum(1)
        self.stat = per_example if self.stat is None else self.stat + per_example  # s_j^2, (examples, d_ff)

    def _select(self) -> None:
        examples, k = self.stat.shape[0], self.keep_count
        if self.selector == "flocking":
            keep = self.stat.topk(k, dim=-1).indices  # sqrt is monotone: rank s^2 directly
        elif self.selector == "magnitude":
            keep = self._magnitude().topk(k).indices.expand(examples, -1)
        else:
            keep = torch.randperm(self.d_ff, generator=self.generator)[:k].to(self.stat.device).expand(examples, -1)
        # Ascending order keeps the neurons in memory order: at rho = 1 the pruned FF is the full FF.
        self.keep = keep.sort(dim=-1).values  # (examples, K)
        d = self.dense
        rows_in = [d.wi_0.weight, d.wi_1.weight] if self.gated else [d.wi.weight]  # (d_ff, d) each
        # A selection shared by construction (static selectors, or rho = 1, which keeps every neuron) runs as
        # plain linear layers on the gathered rows: the fast path, and at rho = 1 bit-identical to the full FF.
        # Flocking always takes the batched path, even for one example, so that which kernel runs (and so
        # the rounding) never depends on the batch an example is in.
        self.shared = self.selector != "flocking" or self.keep_count == self.d_ff
        keep = self.keep[:1] if self.shared else self.keep
        self._weights = ([w[keep] for w in rows_in],  # (examples or 1, K, d)
                         d.wo.weight[:, keep].permute(1, 0, 2))  # (examples or 1, d, K): columns of wo

    def _magnitude(self) -> torch.Tensor:
        d = self.dense
        norm = d.wo.weight.float().norm(dim=0)  # (d_ff,)
        for w in ([d.wi_0.weight, d.wi_1.weight] if self.gated else [d.wi.weight]):
            norm = norm * w.float().norm(dim=1)
        return norm

    def _pruned(self, x: torch.Tensor) -> torch.Tensor:
        """(rows, T, d) -> (rows, T, d) through each example's K kept neurons only."""
        w_in, w_out = self._weights
        act, dropout = self.dense.act, self.dense.dropout
        if self.shared:
            h = act(F.linear(x, w_in[0][0]))  # (rows, T, K)
            if self.gated:
                h = h * F.linear(x, w_in[1][0])
            h = dropout(h)
            return F.linear(h.to(w_out.dtype), w_out[0])  # (rows, T, d)
        rows, t, dm = x.shape
        examples = rows // self.num_beams
        xe = x.reshape(examples, self.num_beams * t, dm)  # rows of one example are contiguous
        h = act(torch.bmm(xe, w_in[0].transpose(1, 2)))  # (examples, beams*T, K)
        if self.gated:
            h = h * torch.bmm(xe, w_in[1].transpose(1, 2))
        h = dropout(h).to(w_out.dtype)
        return torch.bmm(h, w_out.transpose(1, 2)).reshape(rows, t, -1)  # (rows, T, d)


def decoder_ff_slots(model: nn.Module) -> list[nn.Module]:
    """The T5LayerFF of every decoder block (their `.DenseReluDense` is what GRIFFIN replaces)."""
    return [block.layer[-1] for block in model.get_decoder().block]


@contextlib.contextmanager
def griffin(model: nn.Module, rho: float = 0.5, window: int = 4, num_beams: int = 1, selector: str = "flocking",
            seed: int = 0):
    """While open, the decoder FF of `model` (a T5ForConditionalGeneration) is GRIFFIN-pruned.

    Open one context per `generate` call or per teacher-forced forward: positions are counted from the first
    decoder call inside it. Yields the list of GriffinFF modules (kept indices in `.keep`).
    """
    slots = decoder_ff_slots(model)
    generator = torch.Generator().manual_seed(seed)
    originals = [slot.DenseReluDense for slot in slots]
    wrappers = [GriffinFF(dense, rho, window, num_beams, selector, generator) for dense in originals]
    try:
        for slot, wrapper in zip(slots, wrappers):
            slot.DenseReluDense = wrapper
        yield wrappers
    finally:
        for slot, dense in zip(slots, originals):
            slot.DenseReluDense = dense


@torch.no_grad()
def generate(model: nn.Module, rho: float = 0.5, window: int = 4, selector: str = "flocking", seed: int = 0,
             **generate_kwargs):
    """`model.generate(**generate_kwargs)` with GRIFFIN on the decoder FF (greedy or beam search)."""
    with griffin(model, rho, window, generate_kwargs.get("num_beams", 1), selector, seed):
        return model.generate(**generate_kwargs)
