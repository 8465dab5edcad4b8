"""GRIFFIN (docs/method.md §7): per-example feed-forward neuron selection for generation, on T5's decoder FF
and on a causal LM's MLPs.

Within one sequence the FF neurons that fire strongly are nearly the same at every position ("flocking").
GRIFFIN (Dong, Chen, Chi 2024) therefore measures, per FF layer, s_j = sqrt(sum_t (Z_tj / ||Z_t||_2)^2) over
a prompt and keeps the top rho fraction of neurons for the rest of generation. Z (tokens x d_ff) is the input
of the down projection: act(wi x) for T5 v1.0 (T5DenseActDense), act(wi_0 x) * (wi_1 x) for v1.1
(T5DenseGatedActDense), act(gate_proj x) * (up_proj x) for Llama, Qwen2, Mistral and Gemma MLPs.

Causal LMs (`GriffinMLP`), as the released code does it (decoder-only): the prefill, the first forward of a
`generate` call ([prompt ; input]), runs the full MLP and takes the statistic over the prompt phase; every
later call (one token per step, with the KV cache) runs the kept neurons only. Unlike the released code
(batch size 1) the selection is per example, and only over the example's real tokens: the MLP does not see
the attention mask, so the `griffin` context records the mask of each call of the decoder stack
(`StackMask`) and the wrappers read it; pad positions never enter an example's statistic.

T5 (`GriffinFF`), where the released code has no counterpart:
- Only the decoder's FF is pruned: the encoder runs once per input and would gain nothing.
- The T5 decoder has no multi-token prompt, so the statistic is collected over its first `window` positions
  (W decoding steps, run with the full FF); positions W, W+1, ... use the pruned FF. Teacher-forced scoring
  of a whole target follows the same rule position by position, so it matches generation exactly.

Both: the statistic is summed over the example's beams (rows b*num_beams ... (b+1)*num_beams - 1, the order
`generate` expands inputs in), which is invariant to the beam reordering done at every step, and an
example's output does not depend on its batch.

Selectors for comparison: 'flocking' (GRIFFIN), 'magnitude' (static: the product of the neuron's row norms
in the up projections and its column norm in the down projection, ||wi_0_j|| * ||wi_1_j|| * ||wo_j||; the
same neurons for every input), 'random' (a seeded random subset per layer, the same for every input).
Single device only: the pruned path reads weights directly, which a ZeRO-3 partitioned backbone does not
allow.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from trainer.models.family import Family, family_of

SELECTORS = ("flocking", "magnitude", "random")


class NeuronSelection(nn.Module):
    """What both wrappers share: the flocking statistic, the choice of kept neurons and the pruned FF.

    The FF is `down(dropout(act(up_0 x) [* up_1 x]))`: `ups` are the one or two projections whose rows are
    the neurons (d_ff, d), `down` the projection whose columns are (d, d_ff); biases, where a model has
    them, follow their rows.
    """

    def __init__(self, ups: list[nn.Linear], down: nn.Linear, act, dropout, rho: float, num_beams: int,
                 selector: str, generator: torch.Generator | None):
        super().__init__()
        if not 0 < rho <= 1:
            raise ValueError(f"griffin rho={rho}: must lie in (0, 1]")
        if selector not in SELECTORS:
            raise ValueError(f"griffin selector '{selector}': known {', '.join(SELECTORS)}")
        # A tuple, not attributes: the wrapped module already owns these layers.
        self._layers = (tuple(ups), down)
        self.act, self.dropout = act, dropout
        self.rho, self.num_beams, self.selector, self.generator = rho, num_beams, selector, generator
        self.gated = len(ups) == 2
        self.d_ff = down.weight.shape[1]
        self.keep_count = max(1, int(rho * self.d_ff))  # floor(rho * D)
        self.stat = None  # (examples, d_ff) running sum of squared normalised activations
        self.keep = None  # (examples, K) kept neuron indices, ascending
        self._weights = None  # gathered weights and biases per example

    def activations(self, x: torch.Tensor) -> torch.Tensor:
        """Z, the input of the down projection: (rows, T, d) -> (rows, T, d_ff), as the wrapped module does."""
        ups, _ = self._layers
        z = self.act(ups[0](x))
        return z * ups[1](x) if self.gated else z

    def _accumulate(self, z: torch.Tensor, real: torch.Tensor | None = None) -> None:
        """Add z's positions to the statistic: z (rows, T, d_ff); real (rows, T) bool, None for all."""
        rows, t, dff = z.shape
        z = z.float()
        normed = z / z.norm(dim=-1, keepdim=True).clamp(min=1e-12)  # Z_t / ||Z_t||
        squared = normed.pow(2)
        if real is not None:  # where, not a product: a pad position's values may be anything, NaN included
            squared = torch.where(real[..., None], squared, 0.0)
        per_example = squared.reshape(rows // self.num_beams, self.num_beams * t, dff).sum(1)
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
        ups, down = self._layers
        # A selection shared by construction (static selectors, or rho = 1, which keeps every neuron) runs as
        # plain linear layers on the gathered rows: the fast path, and at rho = 1 bit-identical to the full FF.
        # Flocking always takes the batched path, even for one example, so that which kernel runs (and so
        # the rounding) never depends on the batch an example is in.
        self.shared = self.selector != "flocking" or self.keep_count == self.d_ff
        keep = self.keep[:1] if self.shared else self.keep
        self._weights = ([u.weight[keep] for u in ups],  # (examples or 1, K, d)
                         [None if u.bias is None else u.bias[keep] for u in ups],  # (examples or 1, K)
                         down.weight[:, keep].permute(1, 0, 2),  # (examples or 1, d, K): columns of down
                         down.bias)  # (d,) or None: not per neuron

    def _magnitude(self) -> torch.Tensor:
        ups, down = self._layers
        norm = down.weight.float().norm(dim=0)  # (d_ff,)
        for u in ups:
            norm = norm * u.weight.float().norm(dim=1)
        return norm

    def _pruned(self, x: torch.Tensor) -> torch.Tensor:
        """(rows, T, d) -> (rows, T, d) through each example's K kept neurons only."""
        w_in, b_in, w_out, b_out = self._weights
        if self.shared:
            h = self.act(F.linear(x, w_in[0][0], None if b_in[0] is None else b_in[0][0]))  # (rows, T, K)
            if self.gated:
                h = h * F.linear(x, w_in[1][0], None if b_in[1] is None else b_in[1][0])
            h = self.dropout(h)
            return F.linear(h.to(w_out.dtype), w_out[0], b_out)  # (rows, T, d)
        rows, t, dm = x.shape
        examples = rows // self.num_beams
        xe = x.reshape(examples, self.num_beams * t, dm)  # rows of one example are contiguous
        h = self.act(_bmm(xe, w_in[0], b_in[0]))  # (examples, beams*T, K)
        if self.gated:
            h = h * _bmm(xe, w_in[1], b_in[1])
        h = self.dropout(h).to(w_out.dtype)
        out = torch.bmm(h, w_out.transpose(1, 2)).reshape(rows, t, -1)  # (rows, T, d)
        return out if b_out is None else out + b_out


def _bmm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x (E, N, d) through per-example rows weight (E, K, d) and bias (E, K) or None: (E, N, K)."""
    y = torch.bmm(x, weight.transpose(1, 2))
    return y if bias is None else y + bias[:, None, :]


class GriffinFF(NeuronSelection):
    """Drop-in for a T5 decoder layer's `DenseReluDense`: full FF for the first `window` positions (collecting
    the flocking statistic), then the per-example pruned FF.

    Input shape: (rows, T, d) with rows = examples x num_beams; positions count on across calls (one call
    per decoding step in generation, one call for a whole target in teacher-forced scoring).
    Output shape: (rows, T, d).
    """

    def __init__(self, dense: nn.Module, rho: float, window: int, num_beams: int = 1, selector: str = "flocking",
                 generator: torch.Generator | None = None):
        gated = hasattr(dense, "wi_0")
        super().__init__([dense.wi_0, dense.wi_1] if gated else [dense.wi], dense.wo, dense.act, dense.dropout,
                         rho, num_beams, selector, generator)
        if window < 1:
            raise ValueError(f"griffin window={window}: must be at least 1 (the statistic needs a position)")
        self.dense, self.window = dense, window
        self.seen = 0  # decoder positions processed so far

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


class StackMask:
    """A forward pre-hook (with_kwargs=True) for a causal LM's decoder stack (`backbone.model`): keeps the 2-D
    attention mask (rows, past + T) of its current call, which the MLP wrappers cannot see themselves."""

    def __init__(self):
        self.mask = None

    def __call__(self, module, args, kwargs):
        self.mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)


class GriffinMLP(NeuronSelection):
    """Drop-in for a causal LM decoder layer's `mlp` (LlamaMLP, Qwen2MLP, MistralMLP, GemmaMLP: gate_proj,
    up_proj, down_proj, act_fn): the first call (the prefill) runs the full MLP and takes the statistic over
    each example's real tokens, then selects; every later call runs the example's kept neurons only.

    Input shape: (rows, T, d) with rows = examples x num_beams; output shape: (rows, T, d).
    tokens: where the prefill's real positions are read: a `StackMask` whose `.mask` is (rows, past + T),
        its last T columns this call's positions (1 real, 0 pad); None, or a mask of None, takes every
        position as real.
    """

    def __init__(self, mlp: nn.Module, rho: float, num_beams: int = 1, selector: str = "flocking",
                 generator: torch.Generator | None = None, tokens: StackMask | None = None):
        super().__init__([mlp.gate_proj, mlp.up_proj], mlp.down_proj, mlp.act_fn, _identity, rho, num_beams,
                         selector, generator)
        self.mlp, self.tokens = mlp, tokens

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.keep is not None:
            return self._pruned(x)
        z = self.activations(x)  # (rows, T, d_ff): the prefill, full MLP
        self._accumulate(z, self._real(x))
        self._select()
        return self.mlp.down_proj(z)  # the wrapped module's own computation: rho = 1 stays bit-identical

    def _real(self, x: torch.Tensor) -> torch.Tensor | None:
        """(rows, T) bool: which of x's positions are real tokens (the prompt's included), or None: all."""
        mask = self.tokens.mask if self.tokens is not None else None
        if mask is None:
            return None
        rows, t = x.shape[:2]
        if mask.dim() != 2 or mask.shape[0] != rows or mask.shape[1] < t:
            raise ValueError(f"griffin: the decoder stack's attention mask has shape {tuple(mask.shape)}, but the "
                             f"MLP sees {rows} rows of {t} positions; GRIFFIN needs the 2-D padding mask")
        return mask[:, -t:].bool()


def _identity(h: torch.Tensor) -> torch.Tensor:
    return h  # a causal LM's MLP has no dropout


def decoder_ff_slots(model: nn.Module) -> list[nn.Module]:
    """The T5LayerFF of every decoder block (their `.DenseReluDense` is what GRIFFIN replaces)."""
    return [block.layer[-1] for block in model.get_decoder().block]


def causal_mlp_slots(model: nn.Module) -> list[nn.Module]:
    """The decoder layers of a causal LM (their `.mlp` is what GRIFFIN replaces)."""
    return list(model.model.layers)


@contextlib.contextmanager
def griffin(model: nn.Module, rho: float = 0.5, window: int | None = None, num_beams: int = 1,
            selector: str = "flocking", seed: int = 0):
    """While open, the feed-forward layers of `model` are GRIFFIN-pruned: a T5ForConditionalGeneration's
    decoder FF, or a causal LM's MLPs (the family read from its config).

    Open one context per `generate` call or per teacher-forced forward: T5 counts positions from the first
    decoder call inside it (`window`: positions taken by the statistic, default 4); a causal LM takes its
    first call as the prefill (it refuses a window). Yields the list of wrappers (kept indices in `.keep`).
    """
    generator = torch.Generator().manual_seed(seed)
    if family_of(model.config) == Family.CAUSAL:
        if window is not None:
            raise ValueError(f"griffin window={window}: a T5 option; a causal LM takes the statistic over its "
                             "prefill")
        slots, name = causal_mlp_slots(model), "mlp"
        tokens = StackMask()
        wrappers = [GriffinMLP(slot.mlp, rho, num_beams, selector, generator, tokens) for slot in slots]
        hook = model.model.register_forward_pre_hook(tokens, with_kwargs=True)
    else:
        slots, name = decoder_ff_slots(model), "DenseReluDense"
        wrappers = [GriffinFF(slot.DenseReluDense, rho, 4 if window is None else window, num_beams, selector,
                              generator) for slot in slots]
        hook = None
    originals = [getattr(slot, name) for slot in slots]
    try:
        for slot, wrapper in zip(slots, wrappers):
            setattr(slot, name, wrapper)
        yield wrappers
    finally:
        for slot, module in zip(slots, originals):
            setattr(slot, name, module)
        if hook is not None:
            hook.remove()


@torch.no_grad()
def generate(model: nn.Module, rho: float = 0.5, window: int | None = None, selector: str = "flocking",
             seed: int = 0, **generate_kwargs):
    """`model.generate(**generate_kwargs)` with GRIFFIN on the FF layers (greedy or beam search); `window`: T5
    only (default 4)."""
    with griffin(model, rho, window, generate_kwargs.get("num_beams", 1), selector, seed):
        return model.generate(**generate_kwargs)
