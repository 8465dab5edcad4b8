"""GRIFFIN on the T5 decoder and on causal LMs' MLPs (Llama, Qwen2, Mistral, Gemma): rho = 1 is the full model,
pruning is zeroing, batches equal single examples, and a causal LM's statistic reads its real tokens only."""
import contextlib

import pytest
import torch
from transformers import AutoModelForCausalLM

from tests.tiny_models import ARCHITECTURES, lively_causal, lively_t5, random_inputs, tiny_causal_config
from trainer.inference import griffin
from trainer.methods.smop import SMoP
from trainer.models import causal
from trainer.models.prompted import PromptedModel

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


# Causal LMs: the prefill takes the statistic over each example's real tokens, later steps run the kept neurons.

def causal_batch(n: int, seed: int) -> dict:
    ids, mask = random_inputs(n, seed)
    return {"input_ids": ids, "attention_mask": mask}


def soft_prompts(l: int = 3) -> SMoP:
    torch.manual_seed(1)
    return SMoP(32, 3, l, centered=False).eval()


@pytest.fixture(scope="module")
def llama():
    return lively_causal("llama")


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_causal_rho_one_reproduces_full_generation_and_logits(arch):
    model = lively_causal(arch)
    prompted = PromptedModel(model, soft_prompts(), causal)
    b = causal_batch(5, seed=3)
    full, _ = prompted.generate(b, MAX_NEW, synced_gpus=False)
    with griffin.griffin(model, rho=1.0) as wrappers:
        pruned, _ = prompted.generate(b, MAX_NEW, synced_gpus=False)
    assert all(type(w.mlp).__name__.lower() == f"{arch}mlp" for w in wrappers)  # every layer's own MLP class
    assert torch.equal(full, pruned) and full.shape[1] > 3  # past the prefill, into the pruned MLP
    # Logits: a prefill, then a 4-token continuation from the KV cache (the pruned path at T > 1).
    ids, mask = b["input_ids"], b["attention_mask"]
    more = torch.randint(3, 300, (5, 4), generator=torch.Generator().manual_seed(0))
    logits = []
    for context in (contextlib.nullcontext(), griffin.griffin(model, rho=1.0)):
        with context:
            cache = model(input_ids=ids, attention_mask=mask, use_cache=True).past_key_values
            logits.append(model(input_ids=more, attention_mask=torch.cat([mask, torch.ones_like(more)], 1),
                                past_key_values=cache).logits)
    assert torch.equal(logits[0], logits[1])


@pytest.mark.parametrize("arch,bias", [(arch, False) for arch in ARCHITECTURES] + [("llama", True)])
@pytest.mark.parametrize("beams", [1, 2])
def test_causal_pruned_mlp_equals_full_mlp_with_other_neurons_zeroed(arch, bias, beams):
    torch.manual_seed(0)
    mlp = AutoModelForCausalLM.from_config(tiny_causal_config(arch, **({"mlp_bias": True} if bias else {}))
                                           ).model.layers[0].mlp
    ff = griffin.GriffinMLP(mlp, rho=0.5, num_beams=beams)
    x = torch.randn(3 * beams, 5, 32)
    assert torch.equal(ff(x), mlp(x))  # the prefill: the full MLP
    assert ff.keep.shape == (3, 32)
    step = torch.randn(3 * beams, 2, 32)
    mask = torch.zeros(3, ff.d_ff).scatter_(1, ff.keep, 1.0).repeat_interleave(beams, 0)  # (rows, d_ff)
    zeroed = mlp.down_proj(ff.activations(step) * mask[:, None, :])
    torch.testing.assert_close(ff(step), zeroed, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(ff(step), mlp(step), atol=1e-3)  # and it is not the full MLP


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_causal_batch_with_padding_and_soft_prompts_equals_examples_run_one_by_one(arch):
    model = lively_causal(arch)
    prompted = PromptedModel(model, soft_prompts(), causal)
    b = causal_batch(6, seed=4)
    assert len(set(b["attention_mask"].sum(1).tolist())) > 3  # mixed lengths: every row but one is padded
    full, _ = prompted.generate(b, MAX_NEW, synced_gpus=False)
    with griffin.griffin(model, rho=0.5) as wrappers:
        batched, _ = prompted.generate(b, MAX_NEW, synced_gpus=False)
    assert not torch.equal(batched, full)  # pruning changed something: the comparison is not vacuous
    assert len({tuple(w.keep[i].tolist()) for w in wrappers[:1] for i in range(6)}) > 1  # per example
    for i in range(6):
        width = int(b["attention_mask"][i].sum())
        with griffin.griffin(model, rho=0.5) as alone_wrappers:
            alone, _ = prompted.generate({k: v[i:i + 1, :width] for k, v in b.items()}, MAX_NEW, synced_gpus=False)
        assert batched[i, : alone.shape[1]].tolist() == alone[0].tolist(), (arch, i)
        assert (batched[i, alone.shape[1]:] == model.config.pad_token_id).all()  # finished early: padding
        for w, a in zip(wrappers, alone_wrappers):
            assert torch.equal(w.keep[i], a.keep[0])
            torch.testing.assert_close(w.stat[i], a.stat[0], rtol=1e-5, atol=1e-6)


def test_causal_beams_share_their_examples_selection(llama):
    """Left-padded input ids straight into generate, 3 beams: each example's beams are summed into one
    selection, and the batch equals its examples alone."""
    ids, mask = causal.right_align(*random_inputs(3, seed=5))
    kwargs = dict(max_new_tokens=6, do_sample=False, num_beams=3, pad_token_id=0)
    batched = griffin.generate(llama, 0.5, input_ids=ids, attention_mask=mask, **kwargs)
    for i in range(3):
        width = int(mask[i].sum())
        alone = griffin.generate(llama, 0.5, input_ids=ids[i:i + 1, -width:], attention_mask=mask[i:i + 1, -width:],
                                 **kwargs)[0, width:]
        assert batched[i, ids.shape[1]: ids.shape[1] + len(alone)].tolist() == alone.tolist()


def test_causal_statistic_covers_the_soft_prompt_and_the_input_never_the_pads(llama):
    prompted = PromptedModel(llama, soft_prompts(l=3), causal)
    b = causal_batch(4, seed=6)
    seen = []
    with griffin.griffin(llama, rho=0.25) as wrappers:
        wrappers[0].register_forward_pre_hook(lambda module, args: seen.append(args[0]))
        prompted.generate(b, 2, synced_gpus=False)
    _, mask, _, _ = causal.sequence(llama, prompted.prompt_fn(), b["input_ids"], b["attention_mask"])
    z = wrappers[0].activations(seen[0]).float()  # the prefill's (4, 3 + S, d_ff)
    squared = (z / z.norm(dim=-1, keepdim=True)).pow(2)
    torch.testing.assert_close(wrappers[0].stat, (squared * mask[..., None]).sum(1))
    without_prompt = (squared * mask[..., None])[:, 3:].sum(1)
    assert not torch.allclose(wrappers[0].stat, without_prompt, rtol=1e-3)  # the prompt's positions count
    assert not torch.allclose(wrappers[0].stat, squared.sum(1), rtol=1e-3)  # ... and the pads' would have


def test_causal_selection_ignores_the_pad_tokens_embedding(llama):
    prompted = PromptedModel(llama, soft_prompts(), causal)
    b = causal_batch(5, seed=7)
    embedding = llama.get_input_embeddings().weight
    original = embedding[0].clone()
    keeps, outs = {}, {}
    try:
        for pad_row, masked in [(original, True), (original + 3.0, True), (original, False), (original + 3.0, False)]:
            embedding.data[0] = pad_row
            with griffin.griffin(llama, rho=0.25) as wrappers:
                if not masked:  # what the selection would be if the statistic read every position
                    for w in wrappers:
                        w.tokens = None
                out, _ = prompted.generate(b, MAX_NEW, synced_gpus=False)
            key = (float(pad_row.sum()), masked)
            keeps[key], outs[key] = [w.keep for w in wrappers], out
    finally:
        embedding.data[0] = original
    (a, b_), (c, d) = [[k for k in keeps if k[1] == masked] for masked in (True, False)]
    assert all(torch.equal(x, y) for x, y in zip(keeps[a], keeps[b_])) and torch.equal(outs[a], outs[b_])
    assert not all(torch.equal(x, y) for x, y in zip(keeps[c], keeps[d]))  # the pads would have moved it


def test_causal_scoring_from_the_cache_follows_generation(llama):
    """Teacher-forced scoring of the greedy output from the prefill's cache (one call of several tokens, the
    pruned path) re-predicts every generated token."""
    ids, mask = random_inputs(1, seed=8)
    out = griffin.generate(llama, 0.25, input_ids=ids, attention_mask=mask, max_new_tokens=MAX_NEW, do_sample=False,
                           pad_token_id=0)[:, ids.shape[1]:]
    with griffin.griffin(llama, rho=0.25):
        prefill = llama(input_ids=ids, attention_mask=mask, use_cache=True)
        rest = llama(input_ids=out[:, :-1], past_key_values=prefill.past_key_values,
                     attention_mask=torch.ones(1, ids.shape[1] + out.shape[1] - 1, dtype=mask.dtype)).logits
    assert prefill.logits[0, -1].argmax() == out[0, 0]
    assert torch.equal(rest.argmax(-1), out[:, 1:])


def test_causal_static_selectors_share_one_selection(llama):
    b = causal_batch(4, seed=9)
    keeps = {}
    for selector in griffin.SELECTORS:
        with griffin.griffin(llama, rho=0.25, selector=selector, seed=3) as wrappers:
            llama.generate(**b, max_new_tokens=2, do_sample=False, pad_token_id=0)
        keeps[selector] = wrappers[0].keep
        assert keeps[selector].shape == (4, 16)
    assert len({tuple(row.tolist()) for row in keeps["flocking"]}) > 1
    for selector in ("magnitude", "random"):
        assert len({tuple(row.tolist()) for row in keeps[selector]}) == 1
    mlp = llama.model.layers[0].mlp
    norm = mlp.down_proj.weight.norm(dim=0) * mlp.gate_proj.weight.norm(dim=1) * mlp.up_proj.weight.norm(dim=1)
    assert torch.equal(keeps["magnitude"][0], norm.topk(16).indices.sort().values)


def test_causal_refuses_a_window(llama):
    with pytest.raises(ValueError, match="window=2: a T5 option"):
        with griffin.griffin(llama, 0.5, 2):
            pass


def test_causal_prefill_after_a_cached_prefix_reads_the_masks_last_columns(llama):
    """The mask covers the cached positions and the call's own: the call's are its last T columns."""
    ids, mask = causal.right_align(*random_inputs(3, seed=10))  # left-padded: the pads are in the prefix
    cache = llama(input_ids=ids[:, :4], attention_mask=mask[:, :4], use_cache=True).past_key_values
    seen = []
    with griffin.griffin(llama, rho=0.5) as wrappers:
        wrappers[0].register_forward_pre_hook(lambda module, args: seen.append(args[0]))
        llama(input_ids=ids[:, 4:], attention_mask=mask, past_key_values=cache)
    assert (mask[:, :4] == 0).any() and (mask[:, 4:] == 1).all()
    z = wrappers[0].activations(seen[0]).float()
    torch.testing.assert_close(wrappers[0].stat, (z / z.norm(dim=-1, keepdim=True)).pow(2).sum(1))
