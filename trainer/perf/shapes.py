"""The shapes of the backbones the trainer targets: one table that every count, plan and benchmark reads.

`T5Shape` holds the config fields that set a T5's cost; `T5_SHAPES` the LM-adapted T5 v1.1 checkpoints
(google/t5-{base,large,xl,xxl}-lm-adapt: gated-GELU feed-forward, 64-wide heads, vocabulary 32128, an output
layer of its own). Counting and planning from these needs no download and no memory.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class T5Shape:
    """The shape fields of a T5Config that set its cost."""

    d_model: int
    d_ff: int
    num_layers: int
    num_decoder_layers: int
    num_heads: int
    d_kv: int
    vocab_size: int
    gated: bool
    """Gated feed-forward (v1.1: wi_0, wi_1, wo) rather than v1.0's (wi, wo)."""

    @classmethod
    def from_config(cls, cfg) -> "T5Shape":
        """From a transformers T5Config (or anything with its fields)."""
        return cls(cfg.d_model, cfg.d_ff, cfg.num_layers, cfg.num_decoder_layers or cfg.num_layers, cfg.num_heads,
                   cfg.d_kv, cfg.vocab_size, cfg.is_gated_act)

    @property
    def inner(self) -> int:
        return self.num_heads * self.d_kv


T5_VOCAB = 32128


def _v11(d_model: int, d_ff: int, layers: int, heads: int) -> T5Shape:
    return T5Shape(d_model, d_ff, layers, layers, heads, 64, T5_VOCAB, True)


T5_SHAPES = {"t5-base": _v11(768, 2048, 12, 12), "t5-large": _v11(1024, 2816, 24, 16),
             "t5-xl": _v11(2048, 5120, 24, 32), "t5-xxl": _v11(4096, 10240, 24, 64)}
"""google/t5-{base,large,xl,xxl}-lm-adapt, from their config.json files."""
