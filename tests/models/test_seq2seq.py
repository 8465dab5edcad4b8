"""The encoder-decoder family (trainer/models/seq2seq.py) where the causal tests do not already cover it."""
import torch

from tests.tiny_models import EngineLike, lively_t5, random_inputs
from trainer.models import seq2seq


def test_generation_through_a_trained_backbones_engine():
    """Full fine-tuning hands generate the engine: the model's own config (its pad token) is read."""
    model = lively_t5()
    prompts = torch.randn(1, 3, 32)

    def prompt_fn(tokens, mask):
        return prompts.expand(tokens.shape[0], -1, -1), mask.new_ones(tokens.shape[0], 3), None

    ids, mask = random_inputs(4, seed=3)
    batch = {"input_ids": ids, "attention_mask": mask}
    engine, _ = seq2seq.generate(EngineLike(model), prompt_fn, batch, 5, synced_gpus=False)
    plain, _ = seq2seq.generate(model, prompt_fn, batch, 5, synced_gpus=False)
    assert torch.equal(engine, plain)
