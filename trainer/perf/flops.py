"""Analytic inference FLOPs of a T5 and of what each prompt method adds to it.

Counted: 2 x the multiply-accumulates of every matrix product (projections, attention scores and
weighted sums, feed-forward, the output layer), which is what `torch.utils.flop_counter` counts too
(tests/perf/test_flops.py compares the two on a real model). Not counted: layer norms, softmax, activations,
residual adds, embedding lookups and position biases, all O(n * d) and under 1% at T5 sizes.

The decoder is counted teacher-forced over the `target_len` tokens (rank classification; greedy decoding
with a KV cache does the same projections and a slightly smaller self-attention). Pure arithmetic: no
weights are allocated, so T5-XXL is counted as fast as a tiny model.
"""
from __future__ import annotations

from trainer.perf.shapes import T5Shape


def _ff(s: T5Shape, n: int) -> int:
    return (3 if s.gated else 2) * 2 * n * s.d_model * s.d_ff


def encoder_flops(s: T5Shape, n: int) -> int:
    """All encoder layers over n positions (prompt positions included)."""
    projections = 4 * 2 * n * s.d_model * s.inner  # q, k, v, o
    attention = 2 * 2 * n * n * s.inner  # scores and weighted sum
    return s.num_layers * (projections + attention + _ff(s, n))


def decoder_flops(s: T5Shape, n: int, t: int) -> int:
    """All decoder layers and the output layer, t target tokens attending to n encoder positions."""
    self_attn = 4 * 2 * t * s.d_model * s.inner + 2 * 2 * t * t * s.inner
    cross = 2 * 2 * t * s.d_model * s.inner + 2 * 2 * n * s.d_model * s.inner + 2 * 2 * t * n * s.inner
    return s.num_decoder_layers * (self_attn + cross + _ff(s, t)) + 2 * t * s.d_model * s.vocab_size


def t5_flops(s: T5Shape, n: int, t: int) -> int:
    """Forward FLOPs of one example: n encoder positions, t target tokens."""
    return encoder_flops(s, n) + decoder_flops(s, n, t)


ANALYTIC_METHODS = ("smop", "prompt_tuning", "ptuning", "iapt", "full_finetune")
"""The shipped methods, whose cost `method_flops` knows; a registered method of your own has no formula here."""


def method_flops(method: str, s: T5Shape, source_len: int, target_len: int, num_prompts: int = 4,
                 prompt_length: int = 5, iapt_bottleneck: int = 32, iapt_prompts: int = 4) -> int:
    """Inference FLOPs of one example of `source_len` input tokens under `method`.

    smop / prompt_tuning / ptuning: the encoder sees prompt_length more positions; SMoP's router adds one
    (d x k) product. P-tuning's encoder is input-independent: its prompts are computed once and cached, so
    inference costs what prompt tuning of the same length costs. iapt: 4 more positions and, per layer, a
    generator (down projection over the input, 4-query pooling, up projection of the 4 pooled vectors).
    full_finetune: the bare backbone.
    """
    if method == "full_finetune":
        return t5_flops(s, source_len, target_len)
    if method in ("smop", "prompt_tuning", "ptuning"):
        router = 2 * s.d_model * num_prompts if method == "smop" and num_prompts > 1 else 0
        return t5_flops(s, source_len + prompt_length, target_len) + router
    if method == "iapt":
        m, q, n = iapt_bottleneck, iapt_prompts, source_len
        generator = 2 * n * s.d_model * m + 2 * n * m * q + 2 * q * n * m + 2 * q * m * s.d_model
        return t5_flops(s, source_len + q, target_len) + s.num_layers * generator
    raise ValueError(f"unknown method '{method}'; known: {', '.join(ANALYTIC_METHODS)}")
