"""The shapes of the backbones the trainer targets: one table that every count, plan and benchmark reads.

`T5Shape` holds the config fields that set a T5's cost; `T5_SHAPES` the LM-adapted T5 v1.1 checkpoints
(google/t5-{base,large,xl,xxl}-lm-adapt: gated-GELU feed-forward, 64-wide heads, vocabulary 32128, an output
layer of its own). `CausalShape` holds those of a decoder-only LM (Llama, Qwen2, Mistral, Gemma: gated
feed-forward, grouped-query attention, rotary positions); `CAUSAL_SHAPES` real ones, from their config.json
files. Counting and planning from these needs no download and no memory.
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


@dataclass(frozen=True)
class CausalShape:
    """The shape fields of a decoder-only LM's config that set its cost.

    Every layer: q (d -> heads x head_dim), k and v (d -> kv_heads x head_dim each: grouped-query attention
    shares each k/v head among heads / kv_heads query heads), o (heads x head_dim -> d), a gated feed-forward
    of three matrices (gate and up d -> intermediate, down intermediate -> d) and two RMS norms; then a final
    norm and the vocabulary projection, tied to the input embedding or a matrix of its own.
    """

    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    kv_heads: int
    head_dim: int
    """Width of one head: hidden_size / num_heads unless the config says otherwise (Gemma-7B: 256 x 16 = 4096
    query width on a 3072-wide model)."""
    vocab_size: int
    tied: bool
    """The output layer is the input embedding (tie_word_embeddings): vocab x d fewer weights, same compute."""

    @classmethod
    def from_config(cls, cfg) -> "CausalShape":
        """From a transformers LlamaConfig, Qwen2Config, MistralConfig, GemmaConfig (or anything with their fields)."""
        heads = cfg.num_attention_heads
        return cls(cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers, heads,
                   getattr(cfg, "num_key_value_heads", None) or heads,
                   getattr(cfg, "head_dim", None) or cfg.hidden_size // heads, cfg.vocab_size,
                   bool(getattr(cfg, "tie_word_embeddings", False)))

    @property
    def d_model(self) -> int:
        """The width the prompts and the methods' modules have (T5Shape's name for it)."""
        return self.hidden_size

    @property
    def q_width(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_width(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def params(self) -> int:
        """Weights of the whole model: embedding (and output layer unless tied), every layer's seven matrices
        and two norms, the final norm. Qwen2's q/k/v biases are left out (129k of Qwen2.5-7B's 7.6B)."""
        d = self.hidden_size
        layer = d * (2 * self.q_width + 2 * self.kv_width) + 3 * d * self.intermediate_size + 2 * d
        return (1 if self.tied else 2) * self.vocab_size * d + self.num_layers * layer + d


def _gqa(hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int, vocab: int, tied: bool,
         head_dim: int = 128) -> CausalShape:
    return CausalShape(hidden, intermediate, layers, heads, kv_heads, head_dim, vocab, tied)


CAUSAL_SHAPES = {
    "llama-3.2-1b": _gqa(2048, 8192, 16, 32, 8, 128256, True, head_dim=64),
    "llama-3.1-8b": _gqa(4096, 14336, 32, 32, 8, 128256, False),
    "llama-3.1-70b": _gqa(8192, 28672, 80, 64, 8, 128256, False),
    "llama-3.1-405b": _gqa(16384, 53248, 126, 128, 8, 128256, False),
    "qwen2.5-7b": _gqa(3584, 18944, 28, 28, 4, 152064, False),
    "mistral-7b-v0.3": _gqa(4096, 14336, 32, 32, 8, 32768, False),
    "gemma-7b": _gqa(3072, 24576, 28, 16, 16, 256000, True, head_dim=256),
}
"""From the config.json files of meta-llama/Llama-3.2-1B, meta-llama/Llama-3.1-8B, meta-llama/Llama-3.1-70B,
meta-llama/Llama-3.1-405B, Qwen/Qwen2.5-7B, mistralai/Mistral-7B-v0.3 and google/gemma-7b (hidden_size,
intermediate_size, num_hidden_layers, num_attention_heads, num_key_value_heads, head_dim or hidden / heads,
vocab_size, tie_word_embeddings). Their `params` are the published counts: 1,235,814,400 (Llama-3.2-1B),
8,030,261,248 (Llama-3.1-8B), 70,553,706,496 (Llama-3.1-70B), 405,853,388,800 (Llama-3.1-405B),
7,248,023,552 (Mistral-7B-v0.3), 8,537,680,896 (Gemma-7B); Qwen2.5-7B's 7,615,616,512 less its q/k/v biases."""


def shape_of(config) -> T5Shape | CausalShape:
    """The shape of a transformers config of either family: an encoder-decoder config is a T5's (the one
    encoder-decoder the trainer builds), anything else a decoder-only LM's."""
    if getattr(config, "is_encoder_decoder", False):
        return T5Shape.from_config(config)
    return CausalShape.from_config(config)
