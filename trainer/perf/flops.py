"""Analytic inference FLOPs of a backbone (T5 or a decoder-only LM) and of what each prompt method adds to it.

Counted: 2 x the multiply-accumulates of every matrix product (projections, attention scores and
weighted sums, feed-forward, the output layer), which is what `torch.utils.flop_counter` counts too
(tests/perf/test_flops.py compares the two on a real T5 and a real Llama). Not counted: layer norms, softmax,
activations, residual adds, rotary embeddings, embedding lookups and position biases, all O(n * d) and under
1% at these sizes.

T5: the decoder is counted teacher-forced over the `target_len` tokens (rank classification; greedy decoding
with a KV cache does the same projections and a slightly smaller self-attention).

Decoder-only LMs (docs/method.md §10): one sequence of prompt + input + target positions, counted as the
trainer computes it (trainer/models/causal.py `loss_sum`): every layer over the whole sequence, the
vocabulary projection over the last target_len + 1 columns only (`logits_to_keep`). Attention scores and
weighted sums are counted over the full n x n square, the causal upper triangle included: the trainer passes
a padding mask, and wherever a batch has padding transformers hands SDPA an explicit mask, with which it runs
the math or memory-efficient kernel over every block and masks afterwards (so does eager attention), and
torch's FLOP counter counts the full square for every SDPA kernel. In a batch without padding transformers
passes `is_causal` instead, and a flash kernel on a GPU skips the blocks above the diagonal: then about half
of these two terms is not computed, 1% of Llama-3.1-8B's forward at 512 input tokens (the attention terms are
2% of it). Greedy generation with the KV cache does the same projections over the same positions and
attends to fewer keys.

Pure arithmetic: no weights are allocated, so T5-XXL or Llama-3.1-405B is counted as fast as a tiny model.
"""
from __future__ import annotations

from trainer.perf.shapes import CausalShape, T5Shape


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


def causal_layer_flops(s: CausalShape, positions: int) -> int:
    """One decoder layer over `positions` columns: projections, attention (full square), gated feed-forward."""
    d = s.hidden_size
    projections = 2 * positions * d * (2 * s.q_width + 2 * s.kv_width)  # q and o: q_width; k and v: kv_width
    attention = 2 * 2 * positions * positions * s.q_width  # scores and weighted sum for every query head
    feed_forward = 3 * 2 * positions * d * s.intermediate_size  # gate, up, down
    return projections + attention + feed_forward


def causal_flops(s: CausalShape, n: int, t: int) -> int:
    """Forward FLOPs of one example: n positions before the target (prompt and input), t target tokens.

    Every layer runs over the n + t columns; the vocabulary projection over the last t + 1 (the trainer's
    `logits_to_keep`: the column before each target token predicts it, and one more it drops)."""
    return s.num_layers * causal_layer_flops(s, n + t) + 2 * (t + 1) * s.hidden_size * s.vocab_size


def forward_flops(s: T5Shape | CausalShape, n: int, t: int) -> int:
    """The backbone's forward FLOPs of one example, for either family: n prompt and input positions, t target."""
    return causal_flops(s, n, t) if isinstance(s, CausalShape) else t5_flops(s, n, t)


ANALYTIC_METHODS = ("smop", "prompt_tuning", "ptuning", "iapt", "full_finetune")
"""The shipped methods, whose cost `method_flops` knows; a registered method of your own has no formula here."""


def method_flops(method: str, s: T5Shape | CausalShape, source_len: int, target_len: int, num_prompts: int = 4,
                 prompt_length: int = 5, iapt_bottleneck: int = 32, iapt_prompts: int = 4) -> int:
    """Inference FLOPs of one example of `source_len` input tokens and `target_len` target tokens under `method`,
    on a T5 (`T5Shape`) or a decoder-only LM (`CausalShape`).

    smop / prompt_tuning / ptuning: the sequence (T5: the encoder input) gets prompt_length more positions;
    SMoP's router adds one (d x k) product. P-tuning's encoder is input-independent: its prompts are computed
    once and cached, so inference costs what prompt tuning of the same length costs. iapt: 4 more positions
    and, per layer that carries them (T5's encoder layers, a causal LM's layers), a generator (down
    projection over the positions it reads, 4-query pooling, up projection of the 4 pooled vectors); it reads
    the input on a T5, the input and target columns on a causal LM (trainer/methods/iapt.py: the target's are
    masked, not skipped). full_finetune: the bare backbone.
    """
    if method == "full_finetune":
        return forward_flops(s, source_len, target_len)
    if method in ("smop", "prompt_tuning", "ptuning"):
        router = 2 * s.d_model * num_prompts if method == "smop" and num_prompts > 1 else 0
        return forward_flops(s, source_len + prompt_length, target_len) + router
    if method == "iapt":
        m, q = iapt_bottleneck, iapt_prompts
        n = source_len + target_len if isinstance(s, CausalShape) else source_len
        generator = 2 * n * s.d_model * m + 2 * n * m * q + 2 * q * n * m + 2 * q * m * s.d_model
        return forward_flops(s, source_len + q, target_len) + s.num_layers * generator
    raise ValueError(f"unknown method '{method}'; known: {', '.join(ANALYTIC_METHODS)}")
