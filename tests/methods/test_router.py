"""The router against docs/method.md §1, on random inputs."""
import pytest
import torch
import torch.nn.functional as F

from trainer.methods.router import Router, RoutingVariant

VARIANTS = [v.value for v in RoutingVariant]


def make(variant="smop", k=4, d=16, **kw):
    torch.manual_seed(0)
    return Router(d, k, variant, **kw)


def test_smop_math_matches_method_md():
    router, x, eps = make(noise_scale=1.0), torch.randn(6, 16), torch.randn(6, 4)
    out = router(x, eps)
    z = x @ router.proj.weight.t()
    z_tilde = z + 1.0 * eps * z  # multiplicative, relative to each logit
    p = z_tilde.softmax(-1)
    c = p.argmax(-1)
    torch.testing.assert_close(out.probs, p)
    assert torch.equal(out.index, c)
    expected = torch.zeros(6, 4)
    expected[torch.arange(6), c] = p[torch.arange(6), c]
    torch.testing.assert_close(out.weights, expected)


def test_router_is_bias_free_orthogonal_fp32():
    router = make(k=4, d=16)
    assert router.proj.bias is None and router.proj.weight.dtype == torch.float32
    w = router.proj.weight  # (k, d): orthonormal rows
    torch.testing.assert_close(w @ w.t(), torch.eye(4), atol=1e-5, rtol=0)


def test_noise_only_in_training():
    router, x = make(), torch.randn(32, 16)
    clean = router.train(False)(x, torch.randn(32, 4))
    again = router(x, torch.randn(32, 4) * 5)
    assert torch.equal(clean.probs, again.probs) and torch.equal(clean.index, again.index)
    noisy = router.train(True)(x, torch.randn(32, 4))
    assert not torch.allclose(noisy.probs, clean.probs)
    assert torch.equal(router(x, torch.zeros(32, 4)).probs, clean.probs)  # zero noise = clean logits


def test_fp32_routing_for_bf16_inputs():
    router, x = make(), torch.randn(8, 16).bfloat16()
    out = router.train(False)(x)
    assert out.probs.dtype == torch.float32 and out.weights.dtype == torch.float32
    torch.testing.assert_close(out.probs, (x.float() @ router.proj.weight.t()).softmax(-1))


def test_gradient_reaches_router_only_through_chosen_probability():
    """d loss / d U equals the gradient of the reference p_c(U) * P_c: no straight-through term."""
    router, x, eps = make(), torch.randn(5, 16), torch.randn(5, 4)
    prompts, target = torch.randn(4, 3, 16), torch.randn(5, 3, 16)
    out = router(x, eps)
    ((torch.einsum("bk,kld->bld", out.weights, prompts) - target) ** 2).sum().backward()
    grad = router.proj.weight.grad.clone()
    assert grad.abs().sum() > 0

    u = router.proj.weight.detach().clone().requires_grad_(True)
    z = x @ u.t()
    p = (z + eps * z.detach()).softmax(-1)
    c = p.argmax(-1)
    ref = p[torch.arange(5), c][:, None, None] * prompts[c]
    ((ref - target) ** 2).sum().backward()
    torch.testing.assert_close(grad, u.grad)


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_shapes(variant):
    router, x = make(variant, top_k=2), torch.randn(7, 16)
    for training in (True, False):
        out = router.train(training)(x, torch.randn(7, 4))
        assert out.weights.shape == out.probs.shape == (7, 4)
        assert out.index.shape == (7,) and out.aux_loss.shape == ()


def test_topk_mixes_k_active_prompts_without_renormalising():
    out = make("topk", top_k=2).train(False)(torch.randn(9, 16))
    assert ((out.weights > 0).sum(-1) == 2).all()
    assert (out.weights.sum(-1) < 1).all()
    torch.testing.assert_close(out.weights.max(-1).values, out.probs.max(-1).values)


def test_dense_is_the_softmax():
    out = make("dense").train(False)(torch.randn(9, 16))
    torch.testing.assert_close(out.weights, out.probs)


def test_gumbel_is_one_hot_forward_with_soft_gradient():
    router, x = make("gumbel"), torch.randn(9, 16)
    out = router(x, torch.randn(9, 4))
    assert torch.equal(out.weights.detach().sum(-1), torch.ones(9))
    assert set(out.weights.detach().flatten().tolist()) <= {0.0, 1.0}
    (out.weights * torch.randn(9, 4)).sum().backward()
    assert router.proj.weight.grad.abs().sum() > 0
    evaluated = router.train(False)(x)
    assert torch.equal(evaluated.index, evaluated.probs.argmax(-1))


def test_random_routes_uniformly_and_averages_at_eval():
    router = make("random", k=4)
    assert router.proj is None and not list(router.parameters())
    out = router(torch.randn(4000, 16), torch.randn(4000, 4))
    counts = torch.bincount(out.index, minlength=4).float() / 4000
    assert (counts - 0.25).abs().max() < 0.03
    torch.testing.assert_close(router.train(False)(torch.randn(3, 16)).weights, torch.full((3, 4), 0.25))


def test_balance_loss_is_switch_formula():
    router, x = make(balance_coef=0.01), torch.randn(12, 16)
    out = router.train(False)(x)
    f = F.one_hot(out.probs.argmax(-1), 4).float().mean(0)
    torch.testing.assert_close(out.aux_loss, 0.01 * 4 * (f * out.probs.mean(0)).sum())
    assert make(balance_coef=0.0).train(False)(x).aux_loss == 0


def test_unknown_variant_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown routing variant 'nope'"):
        Router(8, 4, "nope")


def test_clean_choice_is_the_noise_free_arg_max_and_differs_under_noise():
    router, x = make(), torch.randn(256, 16)
    noisy = router.train(True)(x, torch.randn(256, 4))
    assert torch.equal(noisy.clean_index, (x @ router.proj.weight.t()).argmax(-1))
    assert (noisy.clean_index != noisy.index).any()  # sigma = 1 flips many training choices
    clean = router.train(False)(x)
    assert torch.equal(clean.index, clean.clean_index) and torch.equal(clean.clean_index, noisy.clean_index)


def test_centred_router_subtracts_its_centre_and_saves_it():
    router, raw, x = make(centered=True), make(), torch.randn(8, 16) + 5.0
    assert raw.center is None and "center" not in raw.state_dict()
    assert torch.equal(router.proj.weight, raw.proj.weight)  # same seed: only the centre differs
    with torch.no_grad():
        router.center.copy_(torch.full((16,), 5.0))
    out = router.train(False)(x)
    torch.testing.assert_close(out.probs, ((x - 5.0) @ router.proj.weight.t()).softmax(-1))
    assert torch.equal(router.state_dict()["center"], torch.full((16,), 5.0))


def test_a_shared_direction_collapses_raw_routing_and_centring_restores_it():
    """docs/method.md §2's diagnosis on constructed inputs: a large common direction makes one prompt win for
    every input under the raw router; the same router reading centred inputs uses every prompt."""
    torch.manual_seed(1)
    common, spread = torch.randn(16) * 10, torch.randn(512, 16)
    x = common + spread
    raw, centred = make(), make(centered=True)
    with torch.no_grad():
        centred.center.copy_(x.mean(0))
    raw_use = torch.bincount(raw.train(False)(x).index, minlength=4)
    centred_use = torch.bincount(centred.train(False)(x).index, minlength=4)
    assert raw_use.max() > 0.9 * len(x)
    assert (centred_use > 0.1 * len(x)).all()
