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


class EngineLike(torch.nn.Module):
    """What a family's functions are handed when the backbone trains (full fine-tuning): a DeepSpeed engine,
    whose `.config` is its own JSON dict, forwarding every other attribute to `.module`."""

    def __init__(self, module):
        super().__init__()
        self.module, self.config = module, {"train_micro_batch_size_per_gpu": 1}

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["module"], name)

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)


def random_inputs(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """n random inputs of 4-11 tokens ending in </s>, right-padded: ids and mask (n, longest)."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(4, 12, (n,), generator=gen)
    rows = [torch.randint(3, 300, (length,), generator=gen).tolist()[:-1] + [1] for length in lengths.tolist()]
    return pad(rows, 0)  # the last token is </s>


ARCHITECTURES = ("llama", "qwen2", "mistral", "gemma")
"""The decoder-only architectures the causal family is tested on, each as a tiny random config."""


def tiny_causal_config(arch: str = "llama", vocab_size: int = 300, tied: bool = True, **overrides):
    """A tiny random config of `arch` (width 32, 2 layers, 4 heads over 2 key/value heads), ids as the trainer's
    trained tokenizers give them (pad 0, </s> 1, no BOS)."""
    from transformers import AutoConfig

    fields = dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=256,
                  tie_word_embeddings=tied, pad_token_id=0, eos_token_id=1, bos_token_id=None, **overrides)
    return AutoConfig.for_model(arch, **fields)


def lively_causal(arch: str = "llama", seed: int = 0, vocab_size: int = 300):
    """A tiny random causal LM whose greedy generations differ between inputs and stop at different lengths
    (a larger init and an untied head whose </s> row is scaled up, as `lively_t5`)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_causal_config(arch, vocab_size, tied=False, initializer_range=0.3))
    with torch.no_grad():
        model.lm_head.weight[1] *= 3.0
    return model.eval().requires_grad_(False)
