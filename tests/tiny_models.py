"""Small random T5s whose greedy generations differ between inputs and stop at different lengths.

A default-initialised 2-layer T5 generates the same token for every input, which would let equivalence
tests pass vacuously. A larger init (initializer_factor=4) and an untied head whose </s> row is scaled up
give varied outputs that end at varied steps, so padding, finished rows and synced ranks are exercised.
"""
import torch
from transformers import T5Config, T5ForConditionalGeneration

from trainer.data.batch import pad


def lively_t5(vocab_size: int = 300, gated: bool = True, seed: int = 0, d_model: int = 32,
              d_ff: int = 64) -> T5ForConditionalGeneration:
    torch.manual_seed(seed)
    config = T5Config(vocab_size=vocab_size, d_model=d_model, d_ff=d_ff, d_kv=8, num_heads=4, num_layers=2,
                      feed_forward_proj="gated-gelu" if gated else "relu", dropout_rate=0.0,
                      initializer_factor=4.0, tie_word_embeddings=False, pad_token_id=0, eos_token_id=1,
                      decoder_start_token_id=0)
    model = T5ForConditionalGeneration(config).eval()
    with torch.no_grad():
        model.lm_head.weight[1] *= 4.0
    return model.requires_grad_(False)


def random_inputs(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """n random inputs of 4-11 tokens ending in </s>, right-padded: ids and mask (n, longest)."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(4, 12, (n,), generator=gen)
    rows = [torch.randint(3, 300, (length,), generator=gen).tolist()[:-1] + [1] for length in lengths.tolist()]
    return pad(rows, 0)  # the last token is </s>
