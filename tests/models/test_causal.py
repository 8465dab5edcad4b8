"""The causal family (trainer/models/causal.py): the sequence [prompt ; input ; target], the loss over the
target only, the router's input, positions, batch independence, the KV cache and the prefix-cached scoring,
on tiny random Llama, Qwen2, Mistral and Gemma configs."""
import pytest
import torch
import torch.nn.functional as F

from tests.tiny_models import ARCHITECTURES, EngineLike, lively_causal, random_inputs
from trainer.methods.iapt import IAPT
from trainer.methods.router import RoutingVariant
from trainer.methods.smop import SMoP, masked_mean
from trainer.models import causal
from trainer.models.prompted import PromptedModel


def batch(n: int, seed: int = 0, targets: bool = True) -> dict:
    ids, mask = random_inputs(n, seed)
    out = {"input_ids": ids, "attention_mask": mask}
    if targets:
        gen = torch.Generator().manual_seed(seed + 7)
        lengths = torch.randint(1, 5, (n,), generator=gen).tolist()
        labels = torch.full((n, max(lengths) + 1), -100)
        for i, length in enumerate(lengths):
            labels[i, :length] = torch.randint(3, 300, (length,), generator=gen)
            labels[i, length] = 1  # </s>
        out["labels"] = labels
    return out


def smop(k: int = 3, l: int = 4, seed: int = 1) -> SMoP:
    torch.manual_seed(seed)
    module = SMoP(32, k, l, centered=False).eval()
    with torch.no_grad():
        module.prompts.mul_(0.5)
    return module


@pytest.fixture(scope="module")
def llama():
    return lively_causal("llama")


def alone_logits(model, prompts: torch.Tensor, ids: list[int], target: list[int]) -> torch.Tensor:
    """Reference: one example, no padding, the plain forward of [prompt ; input ; target] (positions 0, 1, ...)."""
    embed = model.get_input_embeddings()
    seq = torch.cat([prompts, embed(torch.tensor(ids + target))])[None]
    return model(inputs_embeds=seq).logits[0]


def test_loss_is_the_summed_cross_entropy_of_the_target_tokens_only(llama):
    b, method = batch(5), smop()
    wrapped = PromptedModel(llama, method, causal)
    loss, count, _ = wrapped.loss_sum(b)
    expected, tokens = 0.0, 0
    for i in range(5):
        ids = b["input_ids"][i][b["attention_mask"][i].bool()].tolist()
        target = [t for t in b["labels"][i].tolist() if t != -100]
        prompts, _ = method(llama.get_input_embeddings()(torch.tensor([ids])), torch.ones(1, len(ids)))
        logits = alone_logits(llama, prompts[0], ids, target)
        start = prompts.shape[1] + len(ids)  # the first target position
        expected += F.cross_entropy(logits[start - 1: start - 1 + len(target)], torch.tensor(target), reduction="sum")
        tokens += len(target)
    assert int(count) == tokens
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)


def test_the_router_reads_the_input_embeddings_only_the_same_in_training_and_evaluation(llama):
    b, method = batch(6), smop()
    seen = []
    method.router.register_forward_hook(lambda module, args, out: seen.append(args[0].clone()))
    wrapped = PromptedModel(llama, method, causal)
    wrapped.loss_sum(b)
    wrapped.loss_sum({**b, "labels": torch.where(b["labels"] >= 3, b["labels"] + 1, b["labels"])})  # other targets
    wrapped.score_candidates(b, [torch.tensor([5, 1])])
    wrapped.generate(b, 3, synced_gpus=False)
    reference = masked_mean(llama.get_input_embeddings()(b["input_ids"]), b["attention_mask"])
    assert len(seen) == 4
    for pooled in seen:
        torch.testing.assert_close(pooled, reference, rtol=0, atol=1e-6)


def test_positions_count_real_tokens_and_continue_across_the_prompt(llama):
    b, method = batch(4), smop(l=4)
    _, mask, positions, _ = causal.sequence(llama, PromptedModel(llama, method, causal).prompt_fn(),
                                            b["input_ids"], b["attention_mask"], b["labels"])
    for i in range(4):
        real = positions[i][mask[i].bool()]
        assert real.tolist() == list(range(len(real)))  # prompt 0..3, the input from 4, the target after it
        assert positions[i, 4 + (b["input_ids"].shape[1] - int(b["attention_mask"][i].sum()))] == 4


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_an_example_alone_equals_it_in_a_batch_of_eight_mixed_lengths(arch):
    model = lively_causal(arch)
    wrapped = PromptedModel(model, smop(), causal)
    b = batch(8, seed=3, targets=False)
    assert len(set(b["attention_mask"].sum(1).tolist())) > 3  # mixed lengths
    candidates = [torch.tensor([5, 1]), torch.tensor([7, 9, 11, 1]), torch.tensor([1])]
    together, routing = wrapped.generate(b, 6, synced_gpus=False)
    scores, _ = wrapped.score_candidates(b, candidates)
    for i in range(8):
        width = int(b["attention_mask"][i].sum())
        one = {k: v[i:i + 1, :width] for k, v in b.items()}
        alone, alone_routing = wrapped.generate(one, 6, synced_gpus=False)
        assert alone[0].tolist() == together[i, : alone.shape[1]].tolist(), (arch, i)
        assert (together[i, alone.shape[1]:] == model.config.pad_token_id).all()  # finished early: padding
        assert alone_routing.index.item() == routing.index[i].item()
        torch.testing.assert_close(wrapped.score_candidates(one, candidates)[0][0], scores[i], rtol=1e-5, atol=1e-5)
    assert len({tuple(row.tolist()) for row in together}) > 4  # generations differ: not vacuous


def test_prefix_cached_scoring_equals_rerunning_every_candidate(llama):
    wrapped = PromptedModel(llama, smop(), causal)
    b = batch(6, seed=4, targets=False)
    candidates = [torch.tensor([5, 1]), torch.tensor([7, 9, 11, 1]), torch.tensor([1]), torch.tensor([5, 6, 1])]
    cached, _ = causal.candidate_scores(llama, wrapped.prompt_fn(), b, candidates)
    rerun, _ = causal.candidate_scores(llama, wrapped.prompt_fn(), b, candidates, reuse_prefix=False)
    torch.testing.assert_close(cached, rerun, rtol=1e-5, atol=1e-5)
    assert cached.shape == (6, 4) and cached.std() > 0


def test_greedy_generation_with_the_cache_equals_recomputing_without_it(llama):
    """The prompt enters in the prefill only (the method runs once per generate call); every later token
    is fed alone with the KV cache, and the tokens equal a full forward per step without any cache."""
    method = smop()
    calls = []
    method.register_forward_hook(lambda *_: calls.append(1))
    wrapped = PromptedModel(llama, method, causal)
    b = batch(3, seed=5, targets=False)
    out, _ = wrapped.generate(b, 5, synced_gpus=False)
    assert len(calls) == 1
    for i in range(3):
        ids = b["input_ids"][i][b["attention_mask"][i].bool()].tolist()
        prompts, _ = method(llama.get_input_embeddings()(torch.tensor([ids])), torch.ones(1, len(ids)))
        made = []
        for _ in range(5):
            logits = alone_logits(llama, prompts[0], ids, made)
            made.append(int(logits[-1].argmax()))
            if made[-1] == 1:
                break
        assert out[i, : len(made)].tolist() == made


def test_generation_through_a_trained_backbones_engine(llama):
    """Full fine-tuning hands generate the engine: the model's own config (its </s> and pad) is read."""
    prompt_fn = PromptedModel(llama, smop(), causal).prompt_fn()
    b = batch(3, seed=5, targets=False)
    engine, _ = causal.generate(EngineLike(llama), prompt_fn, b, 4, synced_gpus=False)
    plain, _ = causal.generate(llama, prompt_fn, b, 4, synced_gpus=False)
    assert torch.equal(engine, plain)


def test_iapt_writes_its_tokens_in_the_prefill_from_the_input_only(llama):
    """IAPT on decoder layers: the generators read the input's hidden states (never the target's), write
    the first n positions before every layer, and leave decoding steps alone (the tokens sit in the cache):
    generation with the cache equals a full recompute."""
    torch.manual_seed(0)
    module = IAPT(32, 2, bottleneck=8, num_tokens=3)
    for g in module.generators:
        torch.nn.init.normal_(g.up.weight, std=0.5)
    handles = module.attach(causal.prompt_layers(llama))
    try:
        wrapped = PromptedModel(llama, module.eval(), causal)
        b = batch(4, seed=6)
        written = []
        hooks = [layer.register_forward_pre_hook(lambda m, a, k: written.append((a[0] if a else k["hidden_states"])
                                                                                [:, :3].clone()), with_kwargs=True)
                 for layer in causal.prompt_layers(llama)]  # after IAPT's: sees what it wrote
        wrapped.loss_sum(b)
        first = [w.clone() for w in written]
        written.clear()
        wrapped.loss_sum({**b, "labels": torch.where(b["labels"] >= 3, b["labels"] + 5, b["labels"])})
        for a, c in zip(first, written):
            torch.testing.assert_close(a, c)  # other targets, the same soft tokens
        assert all(w.abs().sum() > 0 for w in first)
        for h in hooks:
            h.remove()
        nb = {k: v for k, v in b.items() if k != "labels"}
        out, _ = wrapped.generate(nb, 4, synced_gpus=False)
        for i in range(4):
            width = int(nb["attention_mask"][i].sum())
            one = {k: v[i:i + 1, :width] for k, v in nb.items()}
            made = []
            for _ in range(4):  # no cache: the whole sequence again, the hooks writing in every forward
                embeds, mask, positions, _ = causal.sequence(llama, wrapped.prompt_fn(), one["input_ids"],
                                                             one["attention_mask"])
                extra = llama.get_input_embeddings()(torch.tensor([made], dtype=torch.long))
                seq = torch.cat([embeds, extra], 1)
                logits = llama(inputs_embeds=seq, use_cache=False).logits[0, -1]
                made.append(int(logits.argmax()))
                if made[-1] == 1:
                    break
            assert out[i, : len(made)].tolist() == made, i
    finally:
        for h in handles:
            h.remove()


def test_right_align_moves_each_rows_tokens_to_the_end():
    values = torch.arange(12).view(2, 6)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]])
    aligned, aligned_mask = causal.right_align(values, mask)
    assert aligned_mask.tolist() == [[0, 0, 0, 1, 1, 1], [1] * 6]
    assert aligned[0, 3:].tolist() == [0, 1, 2] and aligned[1].tolist() == values[1].tolist()


@pytest.mark.parametrize("variant", [v.value for v in RoutingVariant])
def test_every_routing_variant_trains_through_a_causal_backbone(llama, variant):
    torch.manual_seed(0)
    method = SMoP(32, 4, 3, routing=variant, balance_coef=0.01, centered=True).train()
    wrapped = PromptedModel(llama, method, causal)
    b = batch(6, seed=8)
    loss, _, routing = wrapped.loss_sum(b, noise=torch.randn(6, 4))
    (loss + routing.aux_loss).backward()
    assert method.prompts.grad.abs().sum() > 0 and torch.isfinite(loss)
    if method.router.proj is not None:  # 'random' has no router parameters
        assert method.router.proj.weight.grad is not None and method.router.proj.weight.grad.abs().sum() > 0
