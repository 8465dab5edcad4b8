"""The analytic FLOP count against a hand count and against torch's FLOP counter on a real T5 and real
decoder-only LMs (Llama, Qwen2, Gemma), the latter also through the trainer's own causal forward."""
from dataclasses import replace

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import (GemmaConfig, GemmaForCausalLM, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM,
                          T5Config, T5ForConditionalGeneration)

from trainer.models import causal
from trainer.perf.flops import causal_flops, method_flops, t5_flops
from trainer.perf.shapes import CAUSAL_SHAPES, T5_SHAPES, CausalShape, T5Shape


def test_hand_count_of_a_tiny_t5():
    # d=4, d_ff=8, 2 heads of 2 (inner 4), 1 + 1 layers, vocab 10, v1.0 feed-forward; n=3 positions, t=2.
    s = T5Shape(d_model=4, d_ff=8, num_layers=1, num_decoder_layers=1, num_heads=2, d_kv=2, vocab_size=10,
                gated=False)
    encoder = 4 * (2 * 3 * 4 * 4) + 2 * (2 * 3 * 3 * 4) + 2 * (2 * 3 * 4 * 8)  # 384 + 144 + 384
    self_attn = 4 * (2 * 2 * 4 * 4) + 2 * (2 * 2 * 2 * 4)  # 256 + 64
    cross = 2 * (2 * 2 * 4 * 4) + 2 * (2 * 3 * 4 * 4) + 2 * (2 * 2 * 3 * 4)  # q,o 128; k,v 192; attn 96
    decoder = self_attn + cross + 2 * (2 * 2 * 4 * 8) + 2 * 2 * 4 * 10  # ff 256, lm head 160
    assert encoder == 912 and decoder == 1152
    assert t5_flops(s, 3, 2) == encoder + decoder


@pytest.mark.parametrize("gated", [False, True])
def test_matches_torch_flop_counter(gated):
    cfg = T5Config(vocab_size=40, d_model=16, d_ff=24, d_kv=4, num_heads=3, num_layers=2, num_decoder_layers=1,
                   feed_forward_proj="gated-gelu" if gated else "relu", decoder_start_token_id=0,
                   attn_implementation="eager")  # eager: torch counts its matmuls (not SDPA's math path)
    model = T5ForConditionalGeneration(cfg).eval()
    n, t = 7, 3
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(input_ids=torch.randint(0, 40, (1, n)), decoder_input_ids=torch.randint(0, 40, (1, t)))
    assert counter.get_total_flops() == t5_flops(T5Shape.from_config(cfg), n, t)


def test_methods_order_and_router_cost():
    s = T5_SHAPES["t5-large"]
    bare = method_flops("full_finetune", s, 100, 2)
    pt5 = method_flops("prompt_tuning", s, 100, 2, 1, 5)
    assert method_flops("smop", s, 100, 2, 4, 5) - pt5 == 2 * 1024 * 4
    assert bare < pt5 < method_flops("prompt_tuning", s, 100, 2, 1, 100)
    assert method_flops("ptuning", s, 100, 2, 1, 5) == pt5
    assert method_flops("iapt", s, 100, 2) > method_flops("prompt_tuning", s, 100, 2, 1, 4)
    with pytest.raises(ValueError, match="unknown method 'lora'"):
        method_flops("lora", s, 100, 2)


def test_hand_count_of_a_tiny_causal_lm():
    # d=4, 2 query heads and 1 k/v head of width 3 (q 6 wide, k/v 3 wide), intermediate 5, 1 layer, vocab 10;
    # n=3 prompt and input positions, t=2 target tokens: 5 columns, logits over the last 3.
    s = CausalShape(hidden_size=4, intermediate_size=5, num_layers=1, num_heads=2, kv_heads=1, head_dim=3,
                    vocab_size=10, tied=False)
    projections = 2 * (2 * 5 * 4 * 6) + 2 * (2 * 5 * 4 * 3)  # q, o: 480; k, v: 240
    attention = 2 * (2 * 5 * 5 * 6)  # scores and weighted sum over the full 5 x 5 square, 6 query columns: 600
    feed_forward = 3 * (2 * 5 * 4 * 5)  # gate, up, down: 600
    head = 2 * 3 * 4 * 10  # t + 1 = 3 columns: 240
    assert projections + attention + feed_forward + head == 2160
    assert causal_flops(s, 3, 2) == 2160


CAUSAL_FAMILIES = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM),
                   "gemma": (GemmaConfig, GemmaForCausalLM)}


def tiny_causal(family: str, tied: bool):
    """A random tiny LM of `family`: grouped-query attention (4 heads, 2 k/v heads) and heads of 8 on a width
    of 24 (query width 32, as Gemma-7B's differs from its width), eager attention (torch counts its matmuls;
    its SDPA kernel on the CPU has no FLOP formula)."""
    config_class, model_class = CAUSAL_FAMILIES[family]
    cfg = config_class(vocab_size=50, hidden_size=24, intermediate_size=40, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, head_dim=8, tie_word_embeddings=tied, attn_implementation="eager")
    return model_class(cfg).eval()


@pytest.mark.parametrize("family", sorted(CAUSAL_FAMILIES))
def test_causal_matches_torch_flop_counter(family):
    model = tiny_causal(family, tied=family == "gemma")
    n, t = 7, 3
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(input_ids=torch.randint(0, 50, (1, n + t)), logits_to_keep=t + 1)
    assert counter.get_total_flops() == causal_flops(CausalShape.from_config(model.config), n, t)


def test_causal_count_is_the_trainers_forward():
    """trainer/models/causal.py's loss_sum over [prompt ; input ; target]: what method_flops counts for a
    prompt of l positions, the vocabulary projection over the target's t + 1 columns only."""
    model = tiny_causal("llama", tied=False)
    l, n, t = 4, 6, 3
    prompts = torch.randn(2, l, 24)

    def prompt_fn(tokens, mask):  # fixed prompts: no matmul of the method's own in the count
        return prompts, mask.new_ones(2, l), None

    batch = {"input_ids": torch.randint(2, 50, (2, n)), "attention_mask": torch.ones(2, n, dtype=torch.long),
             "labels": torch.randint(2, 50, (2, t))}
    batch["attention_mask"][1, -2:] = 0  # a padded row: the square is computed all the same
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        causal.loss_sum(model, prompt_fn, batch)
    shape = CausalShape.from_config(model.config)
    assert counter.get_total_flops() == 2 * causal_flops(shape, l + n, t)
    assert 2 * causal_flops(shape, l + n, t) == 2 * method_flops("prompt_tuning", shape, n, t, 1, l)


def test_causal_methods_order_and_dispatch():
    s = CAUSAL_SHAPES["llama-3.1-8b"]
    bare = method_flops("full_finetune", s, 512, 8)
    pt5 = method_flops("prompt_tuning", s, 512, 8, 1, 5)
    assert bare == causal_flops(s, 512, 8) and pt5 == causal_flops(s, 517, 8)
    assert method_flops("smop", s, 512, 8, 4, 5) - pt5 == 2 * 4096 * 4
    assert bare < pt5 < method_flops("prompt_tuning", s, 512, 8, 1, 100)
    assert method_flops("ptuning", s, 512, 8, 1, 5) == pt5
    # IAPT's generators read the input and the target columns of every layer
    generator = 2 * 520 * 4096 * 32 + 2 * 520 * 32 * 4 + 2 * 4 * 520 * 32 + 2 * 4 * 32 * 4096
    assert method_flops("iapt", s, 512, 8) == causal_flops(s, 516, 8) + 32 * generator
    # the vocabulary projection runs over the t + 1 last columns, whatever the input length
    wider = replace(s, vocab_size=s.vocab_size + 1000)
    for source_len in (64, 512):
        assert causal_flops(wider, source_len, 8) - causal_flops(s, source_len, 8) == 2 * 9 * 4096 * 1000
    # same widths, other family: the T5 count
    assert method_flops("prompt_tuning", T5_SHAPES["t5-xl"], 512, 8, 1, 5) == t5_flops(T5_SHAPES["t5-xl"], 517, 8)
