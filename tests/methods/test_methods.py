"""Methods as configurations of shared parts: parameter counts, P-tuning's encoder, IAPT's generators and
hooks, on tiny random T5s in one process."""
import pytest
import torch
from transformers import T5Config, T5ForConditionalGeneration

from trainer.methods import iapt
from trainer.methods import ptuning
from trainer.methods.iapt import IAPT, PromptGenerator, Rational
from trainer.methods.full_finetune import NoPrompt
from trainer.models import seq2seq
from trainer.models.prompted import PromptedModel
from trainer.methods.ptuning import PromptEncoder
from trainer.methods.smop import SMoP


def tiny_t5(d=32, layers=2, seed=0):
    torch.manual_seed(seed)
    cfg = T5Config(vocab_size=50, d_model=d, d_ff=64, d_kv=8, num_heads=4, num_layers=layers,
                   feed_forward_proj="gated-gelu", dropout_rate=0.0, decoder_start_token_id=0)
    return T5ForConditionalGeneration(cfg).eval().requires_grad_(False)


def count(module):
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


@pytest.mark.parametrize("length", [5, 20, 50, 100])
def test_prompt_tuning_params_are_l_times_d(length):
    assert count(SMoP(1024, num_prompts=1, prompt_length=length)) == length * 1024


def test_smop_params_match_the_paper():
    assert count(SMoP(768, 4, 5)) == 18_432
    assert count(SMoP(1024, 4, 5)) == 24_576
    assert count(SMoP(1024, 1, 20)) == 20_480


@pytest.mark.parametrize("kind", ["mlp", "lstm"])
def test_ptuning_params_match_the_formula(kind):
    smop = SMoP(64, 1, 5, encoder=PromptEncoder(64, 128, kind))
    assert count(smop) == ptuning.num_params(64, 5, 128, kind)
    # MLP by hand: inputs 5*64, Linear(64,128), Linear(128,128), Linear(128,64)
    if kind == "mlp":
        assert count(smop) == 320 + (64 * 128 + 128) + (128 * 128 + 128) + (128 * 64 + 64)


@pytest.mark.parametrize("kind", ["mlp", "lstm"])
def test_ptuning_prompts_come_from_the_encoder_and_train_it(kind):
    torch.manual_seed(0)
    smop = SMoP(16, 1, 3, encoder=PromptEncoder(16, 8, kind))
    embeds, mask = torch.randn(2, 4, 16), torch.ones(2, 4)
    prompts, routing = smop(embeds, mask)
    assert prompts.shape == (2, 3, 16)
    torch.testing.assert_close(prompts[0], smop.encoder(smop.prompts)[0])
    assert not torch.allclose(prompts[0], smop.prompts[0])  # reparameterised, not the raw inputs
    prompts.sum().backward()
    assert smop.prompts.grad.abs().sum() > 0 and smop.encoder.head[-1].weight.grad.abs().sum() > 0


def test_ptuning_rejects_unknown_encoder():
    with pytest.raises(ValueError, match="unknown P-tuning encoder 'gru'"):
        PromptEncoder(16, 8, "gru")


def test_rational_starts_as_gelu():
    x = torch.linspace(-5, 5, 1001)
    err = (Rational()(x) - torch.nn.functional.gelu(x)).abs().max()
    assert err < 0.005


def test_iapt_params_are_2dm_per_layer_plus_small_terms():
    d, layers, m = 1024, 24, 32
    module = IAPT(d, layers, bottleneck=m)
    assert count(module) == iapt.num_params(d, layers, m)
    small = count(module) - layers * 2 * d * m
    assert small == layers * (m + 4 * m + 12)  # down bias, 4 queries, 7 + 5 rational coefficients
    assert small / count(module) < 0.01


def test_generator_ignores_padding_and_other_examples():
    torch.manual_seed(0)
    gen = PromptGenerator(16, 8)
    torch.nn.init.normal_(gen.up.weight)
    hidden = torch.randn(2, 5, 16)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    out = gen(hidden, mask)
    assert out.shape == (2, 4, 16)
    changed = hidden.clone()
    changed[0, 3:] = 100.0  # pads of example 0
    torch.testing.assert_close(gen(changed, mask)[0], out[0])
    torch.testing.assert_close(gen(hidden[:1, :3], mask[:1, :3])[0], out[0], rtol=1e-5, atol=1e-6)


def test_iapt_hooks_write_prompts_before_every_encoder_layer():
    model = tiny_t5()
    module = IAPT(32, 2, bottleneck=8)
    module.attach(model.encoder.block)
    seen = []
    for block in model.encoder.block:  # registered after IAPT's, so it sees what IAPT wrote
        block.register_forward_pre_hook(lambda b, args: seen.append(args[0][:, :4].clone()))
    for g in module.generators:
        torch.nn.init.normal_(g.up.weight)
    wrapped = PromptedModel(model, module, seq2seq)
    ids, mask = torch.randint(3, 50, (2, 6)), torch.ones(2, 6, dtype=torch.long)
    embeds, full_mask, _ = seq2seq.encoder_inputs(model, wrapped.prompt_fn(), ids, mask)
    assert embeds.shape == (2, 10, 32) and full_mask[:, :4].eq(1).all()
    model.encoder(inputs_embeds=embeds, attention_mask=full_mask)
    assert len(seen) == 2
    for i, written in enumerate(seen):
        assert written.abs().sum() > 0  # the zero placeholders were overwritten
    # Layer 0's generator read the input embeddings themselves.
    torch.testing.assert_close(seen[0], module.generators[0](embeds[:, 4:], mask))


def test_iapt_starts_at_the_frozen_model_and_trains_its_generators():
    model = tiny_t5()
    module = IAPT(32, 2, bottleneck=8)
    module.attach(model.encoder.block)
    wrapped = PromptedModel(model, module, seq2seq)
    batch = {"input_ids": torch.randint(3, 50, (2, 6)), "attention_mask": torch.ones(2, 6, dtype=torch.long),
             "labels": torch.randint(3, 50, (2, 3))}
    loss, _, _ = wrapped.loss_sum(batch)
    loss.backward()
    assert module.generators[0].up.weight.grad.abs().sum() > 0
    assert module.generators[1].up.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())


def test_no_prompt_leaves_the_input_alone():
    model = tiny_t5()
    wrapped = PromptedModel(model, NoPrompt(32), seq2seq)
    ids, mask = torch.randint(3, 50, (2, 6)), torch.ones(2, 6, dtype=torch.long)
    embeds, full_mask, _ = seq2seq.encoder_inputs(model, wrapped.prompt_fn(), ids, mask)
    torch.testing.assert_close(embeds, model.get_input_embeddings()(ids))
    assert torch.equal(full_mask, mask)


def test_config_selects_methods_and_checks_them():
    from trainer.config import load_config
    from trainer.methods.registry import build_method, get_method

    def positions(*overrides):
        """What the config check reserves for the method, and what the built module prepends: the same."""
        p = load_config(None, list(overrides)).prompt
        return get_method(p.method).prompt_length(p), build_method(p, tiny_t5().config).prompt_length

    assert positions("prompt.method=iapt") == (4, 4)
    assert positions("prompt.method=full_finetune") == (0, 0)
    assert positions("prompt.method=smop", "prompt.prompt_length=7") == (7, 7)
    assert positions("prompt.method=prompt_tuning", "prompt.num_prompts=1") == (5, 5)
    cfg = load_config(None, ["prompt.method=ptuning", "prompt.num_prompts=1", "prompt.ptuning_encoder=lstm"])
    assert cfg.prompt.ptuning_encoder.value == "lstm"
    assert positions("prompt.method=ptuning", "prompt.num_prompts=1", "prompt.ptuning_encoder=lstm") == (5, 5)
    with pytest.raises(ValueError, match="prompt.num_prompts=4: ptuning uses one prompt"):
        load_config(None, ["prompt.method=ptuning"])
    with pytest.raises(ValueError, match="prompt.iapt_bottleneck=0: must be at least 1"):
        load_config(None, ["prompt.method=iapt", "prompt.iapt_bottleneck=0"])
    with pytest.raises(ValueError, match="prompt.method: unknown method 'lora'; registered: smop, prompt_tuning, "
                                         "ptuning, iapt, full_finetune"):  # then any plug-ins
        load_config(None, ["prompt.method=lora"])
