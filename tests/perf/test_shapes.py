"""trainer/perf/shapes.py: the causal shapes read from a config, their weights against real models and the
published counts."""
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, T5Config

from trainer.perf.shapes import CAUSAL_SHAPES, CausalShape, T5Shape, shape_of


@pytest.mark.parametrize("tied", [True, False])
def test_causal_params_are_the_real_models(tied):
    cfg = LlamaConfig(vocab_size=101, hidden_size=32, intermediate_size=56, num_hidden_layers=3, num_attention_heads=4,
                      num_key_value_heads=1, head_dim=12, tie_word_embeddings=tied)
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg)
    shape = CausalShape.from_config(cfg)
    assert (shape.q_width, shape.kv_width, shape.tied) == (48, 12, tied)
    assert shape.params == sum(p.numel() for p in model.parameters())


def test_table_gives_the_published_parameter_counts():
    published = {"llama-3.2-1b": 1_235_814_400, "llama-3.1-8b": 8_030_261_248, "llama-3.1-70b": 70_553_706_496,
                 "llama-3.1-405b": 405_853_388_800, "mistral-7b-v0.3": 7_248_023_552, "gemma-7b": 8_537_680_896,
                 "qwen2.5-7b": 7_615_616_512 - 28 * (3584 + 2 * 512)}  # Qwen2's q/k/v biases are not counted
    assert {name: s.params for name, s in CAUSAL_SHAPES.items()} == published


def test_head_width_and_family_from_the_config():
    # no head_dim: hidden / heads; no num_key_value_heads: one k/v head per query head
    plain = CausalShape.from_config(LlamaConfig(hidden_size=64, num_attention_heads=4, intermediate_size=8,
                                                num_hidden_layers=1, vocab_size=10))
    assert (plain.head_dim, plain.kv_heads, plain.d_model) == (16, 4, 64)
    assert shape_of(LlamaConfig(hidden_size=64, num_attention_heads=4)) == CausalShape.from_config(
        LlamaConfig(hidden_size=64, num_attention_heads=4))
    t5 = T5Config(d_model=32, d_ff=48, d_kv=8, num_heads=2, num_layers=2)
    assert shape_of(t5) == T5Shape.from_config(t5)
