"""GRIFFIN on the T5 decoder: rho = 1 is the full model, pruning is zeroing, batches equal single examples."""
import pytest
import torch

from tests.tiny_models import lively_t5, random_inputs
from trainer.inference import griffin

MAX_NEW = 10


@pytest.fixture(scope="module", params=["gated", "plain"])
def model(request):
    return lively_t5(gated=request.param == "gated", d_ff=96)


def test_wraps_the_right_ff_class(model):
    name = type(griffin.decoder_ff_slots(model)[0].DenseReluDense).__name__
    assert name == ("T5DenseGatedActDense" if model.config.is_gated_act else "T5DenseActDense")


@pytest.mark.parametrize("beams", [1, 3])
def test_rho_one_reproduces_the_unpruned_generation(model, beams):
    ids, mask = random_inputs(5)
    kwargs = dict(input_ids=ids, attention_mask=mask, max_new_tokens=MAX_NEW, do_sample=False, num_beams=beams)
    full = model.generate(**kwargs)
    pruned = griffin.generate(model, rho=1.0, window=2, **kwargs)
    assert torch.equal(full, pruned)
    assert full.shape[1] > 3  # generation went past the window, into the pruned FF


def test_rho_one_teacher_forced_logits_match(model):
    ids, mask = random_inputs(4)
    target = torch.randint(3, 300, (4, 9))
    full = model(input_ids=ids, attention_mask=mask, decoder_input_ids=target).logits
    with griffin.griffin(model, rho=1.0, window=3):
        pruned = model(input_ids=ids, attention_mask=mask, decoder_input_ids=target).logits
    assert torch.equal(pruned, full)


@pytest.mark.parametrize("beams", [1, 2])
def test_pruned_ff_equals_full_ff_with_other_neurons_zeroed(model, beams):
    dense = griffin.decoder_ff_slots(model)[1].DenseReluDense
    ff = griffin.GriffinFF(dense, rho=0.5, window=2, num_beams=beams)
    x = torch.randn(3 * beams, 6, 32)
    out = ff(x)  # positions 0-1: full FF and statistic; 2-5: pruned
    assert torch.equal(out[:, :2], dense(x)[:, :2])
    assert ff.keep.shape == (3, 48)
    mask = torch.zeros(3, ff.d_ff).scatter_(1, ff.keep, 1.0).repeat_interleave(beams, 0)  # (rows, d_ff)
    zeroed = dense.wo(ff.activations(x[:, 2:]) * mask[:, None, :])
    torch.testing.assert_close(out[:, 2:], zeroed, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out[:, 2:], dense(x[:, 2:]), atol=1e-3)  # and it is not the full FF


def test_selection_is_per_example_for_flocking_and_shared_for_static_selectors(model):
    dense = griffin.decoder_ff_slots(model)[0].DenseReluDense
    x = torch.randn(4, 5, 32)
    keeps = {}
    for selector in griffin.SELECTORS:
        ff = griffin.GriffinFF(dense, rho=0.25, window=3, selector=selector,
                               generator=torch.Generator().manual_seed(0))
        ff(x)
        keeps[selector] = ff.keep
        assert ff.keep.shape == (4, 24)
    assert len({tuple(row.tolist()) for row in keeps["flocking"]}) > 1
    for selector in ("magnitude", "random"):
        assert len({tuple(row.tolist()) for row in keeps[selector]}) == 1
    # flocking keeps the neurons with the largest statistic
    z = ff.activations(x[:, :3]).float()
    s = (z / z.norm(dim=-1, keepdim=True)).pow(2).sum(1)  # (4, d_ff)
    assert torch.equal(s.topk(24, dim=-1).indices.sort(-1).values, keeps["flocking"])


@pytest.mark.parametrize("beams", [1, 3])
def test_batch_equals_examples_run_one_by_one(model, beams):
    ids, mask = random_inputs(6, seed=1)
    kwargs = dict(max_new_tokens=MAX_NEW, do_sample=False, num_beams=beams)
    batched = griffin.generate(model, rho=0.5, window=2, input_ids=ids, attention_mask=mask, **kwargs)
    full = model.generate(input_ids=ids, attention_mask=mask, **kwargs)
    assert not torch.equal(batched, full)  # pruning changed something: the comparison is not vacuous
    for i in range(6):
        length = int(mask[i].sum())
        alone = griffin.generate(model, rho=0.5, window=2, input_ids=ids[i:i + 1, :length],
                                 attention_mask=mask[i:i + 1, :length], **kwargs)[0]
        assert torch.equal(batched[i, : len(alone)], alone)
        assert torch.isin(batched[i, len(alone):], torch.tensor([0, 1])).all()  # pad (greedy) or </s> (beams)


def test_teacher_forced_scoring_follows_generation(model):
    """The position rule is shared: scoring the greedy output under GRIFFIN re-predicts every token."""
    ids, mask = random_inputs(1, seed=2)
    out = griffin.generate(model, rho=0.25, window=2, input_ids=ids, attention_mask=mask, max_new_tokens=MAX_NEW,
                           do_sample=False)
    end = int((out[0] == 1).nonzero()[0]) + 1 if (out[0] == 1).any() else out.shape[1]
    out = out[:, :end]
    with griffin.griffin(model, rho=0.25, window=2):
        logits = model(input_ids=ids, attention_mask=mask, decoder_input_ids=out[:, :-1]).logits
    assert torch.equal(logits.argmax(-1), out[:, 1:])


def test_bad_arguments_are_refused(model):
    dense = griffin.decoder_ff_slots(model)[0].DenseReluDense
    for kwargs, message in [({"rho": 0.0}, "rho=0.0"), ({"rho": 0.5, "window": 0}, "window=0"),
                            ({"rho": 0.5, "selector": "oracle"}, "oracle")]:
        with pytest.raises(ValueError, match=message):
            griffin.GriffinFF(dense, **{"window": 2, **kwargs})
