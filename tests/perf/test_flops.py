"""The analytic FLOP count against a hand count and against torch's FLOP counter on a real T5."""
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import T5Config, T5ForConditionalGeneration

from trainer.perf.flops import method_flops, t5_flops
from trainer.perf.shapes import T5_SHAPES, T5Shape


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
