"""The prompt bank, masked mean, parameter counts and batch independence."""
import pytest
import torch
from torch import nn

from trainer.methods.router import RoutingVariant

VARIANTS = [v.value for v in RoutingVariant]
from trainer.methods.smop import SMoP, init_prompts, masked_mean


def test_masked_mean_ignores_padding_and_keeps_eos():
    embeds, mask = torch.randn(2, 5, 8), torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    ref = torch.stack([embeds[0, :3].mean(0), embeds[1].mean(0)])
    torch.testing.assert_close(masked_mean(embeds, mask), ref)
    changed = embeds.clone()
    changed[0, 3:] = 1e4  # pad positions may hold anything
    torch.testing.assert_close(masked_mean(changed, mask), ref)
    assert masked_mean(embeds, torch.zeros(2, 5)).abs().max() == 0  # an all-pad row divides by 1, not 0


@pytest.mark.parametrize("d, k, l, expected", [(768, 4, 5, 18_432), (1024, 4, 5, 24_576), (1024, 1, 20, 20_480)])
def test_parameter_count_is_kld_plus_dk(d, k, l, expected):
    smop = SMoP(d, k, l)
    assert sum(p.numel() for p in smop.parameters()) == expected == k * l * d + (d * k if k > 1 else 0)
    assert smop.prompts.shape == (k, l, d) and smop.prompts.dtype == torch.float32


def test_prompt_tuning_is_one_prompt_without_router():
    smop = SMoP(16, 1, 7)
    prompts, routing = smop(torch.randn(3, 4, 16), torch.ones(3, 4))
    assert smop.router is None
    torch.testing.assert_close(prompts, smop.prompts[0].expand(3, -1, -1))
    assert routing.index.tolist() == [0, 0, 0]


def test_top1_prompt_is_probability_times_own_choice():
    torch.manual_seed(0)
    smop = SMoP(16, 4, 5).train(False)
    embeds, mask = torch.randn(6, 9, 16), torch.ones(6, 9)
    prompts, routing = smop(embeds, mask)
    c = routing.index
    torch.testing.assert_close(prompts, routing.probs[torch.arange(6), c][:, None, None] * smop.prompts[c])


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("training", [True, False])
def test_an_example_does_not_depend_on_its_batch(variant, training):
    """The released code's top-1 summed the whole batch's choices; here each example gets its own."""
    torch.manual_seed(0)
    smop = SMoP(16, 4, 5, routing=variant).train(training)
    embeds, noise = torch.randn(8, 6, 16), torch.randn(8, 4)
    mask = torch.ones(8, 6)
    mask[3, 4:] = 0
    together, _ = smop(embeds, mask, noise)
    for i in range(8):
        alone, _ = smop(embeds[i:i + 1], mask[i:i + 1], noise[i:i + 1])
        torch.testing.assert_close(alone[0], together[i], rtol=0, atol=1e-6)


def test_unchosen_prompts_get_no_gradient():
    torch.manual_seed(0)
    smop = SMoP(16, 4, 5)
    prompts, routing = smop(torch.randn(3, 6, 16), torch.ones(3, 6), torch.randn(3, 4))
    prompts.sum().backward()
    used = set(routing.index.tolist())
    for j in range(4):
        assert (smop.prompts.grad[j].abs().sum() > 0) == (j in used)


def test_inits():
    smop, gen = SMoP(32, 4, 5), torch.Generator().manual_seed(0)
    init_prompts(smop, "uniform", generator=gen)
    assert smop.prompts.min() >= -0.5 and smop.prompts.max() <= 0.5
    init_prompts(smop, "normal", generator=gen)
    assert 0.8 < smop.prompts.std() < 1.2
    embed = nn.Embedding(100, 32)
    ids = torch.randint(0, 100, (4, 5))
    init_prompts(smop, "vocab", embed=embed, token_ids=ids)
    torch.testing.assert_close(smop.prompts.data, embed.weight[ids].detach())
    with pytest.raises(ValueError, match="unknown prompt init"):
        init_prompts(smop, "zeros")
