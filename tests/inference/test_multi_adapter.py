"""A batch mixing several adapters equals each adapter's examples run alone, in one backbone forward."""
import pytest
import torch

from tests.tiny_models import lively_causal, lively_t5, random_inputs
from trainer.inference.multi_adapter import MultiAdapterModel
from trainer.models import causal, seq2seq
from trainer.models.prompted import PromptedModel
from trainer.methods.smop import SMoP


def adapters() -> dict[str, SMoP]:
    torch.manual_seed(1)
    # Different prompt lengths, k and routing: the shorter prompts are left-padded with masked positions.
    return {"a": SMoP(32, 4, 5, "smop").eval(), "b": SMoP(32, 3, 2, "topk", top_k=2).eval(),
            "c": SMoP(32, 1, 5).eval()}


def batch(n: int, seed: int = 0):
    ids, mask = random_inputs(n, seed)
    return {"input_ids": ids, "attention_mask": mask}


@pytest.fixture(scope="module")
def setup():
    model = lively_t5()
    bank = adapters()
    inputs = batch(12)
    names = ["a", "b", "c", "b", "a", "a", "c", "b", "a", "c", "c", "b"]
    return model, bank, inputs, names


def alone(model, smop, inputs, rows, max_new_tokens=10):
    """The reference: PromptedModel, the trainer's single-adapter path, on just these rows, unpadded extra."""
    sub = {k: v[rows] for k, v in inputs.items()}
    width = int(sub["attention_mask"].sum(1).max())
    sub = {k: v[:, :width] for k, v in sub.items()}
    out, routing = PromptedModel(model, smop, seq2seq).generate(sub, max_new_tokens, synced_gpus=False)
    return out, routing.index


def test_mixed_batch_generates_what_each_adapter_generates_alone(setup):
    model, bank, inputs, names = setup
    multi = MultiAdapterModel(model, bank)
    out, index = multi.generate(inputs, multi.adapter_ids(names), max_new_tokens=10)
    lengths = set()
    for name, smop in bank.items():
        rows = [i for i, n in enumerate(names) if n == name]
        ref, ref_index = alone(model, smop, inputs, rows)
        got = out[rows][:, : ref.shape[1]]
        assert torch.equal(got, ref), name
        assert (out[rows][:, ref.shape[1]:] == 0).all()  # the rest is padding
        assert torch.equal(index[rows], ref_index)
        lengths |= set((ref != 0).sum(1).tolist())
    assert len(lengths) > 1  # generations end at different steps: padding of finished rows is exercised


def test_mixed_batch_scores_equal_alone(setup):
    model, bank, inputs, names = setup
    multi = MultiAdapterModel(model, bank)
    candidates = [torch.tensor([5, 1]), torch.tensor([7, 9, 1])]
    scores, _ = multi.score_candidates(inputs, multi.adapter_ids(names), candidates)
    for name, smop in bank.items():
        rows = [i for i, n in enumerate(names) if n == name]
        ref, _ = PromptedModel(model, smop, seq2seq).score_candidates({k: v[rows] for k, v in inputs.items()}, candidates)
        torch.testing.assert_close(scores[rows], ref, rtol=1e-5, atol=1e-5)


def test_left_padding_keeps_prompt_next_to_input(setup):
    model, bank, inputs, names = setup
    multi = MultiAdapterModel(model, bank)
    embeds, mask, _ = seq2seq.encoder_inputs(model, multi.prompt_fn(multi.adapter_ids(names)), inputs["input_ids"],
                                             inputs["attention_mask"])
    assert embeds.shape[1] == 5 + inputs["input_ids"].shape[1]
    b_row = names.index("b")  # l = 2 of L = 5: three masked positions, then the prompt, then the input
    assert mask[b_row, :5].tolist() == [0, 0, 0, 1, 1]
    assert (embeds[b_row, :3] == 0).all()


def test_unknown_adapter_and_width_mismatch_are_refused(setup):
    model, bank, _, _ = setup
    multi = MultiAdapterModel(model, bank)
    with pytest.raises(ValueError, match="unknown adapter.*zzz"):
        multi.adapter_ids(["a", "zzz"])
    with pytest.raises(ValueError, match="width"):
        MultiAdapterModel(model, {"wide": SMoP(64, 2, 3)})


def test_mixed_adapters_over_a_causal_backbone_equal_each_alone():
    """The causal family: a shorter prompt is left-padded inside the prompt columns, and positions count real
    tokens only, so each example generates and scores exactly as with its own adapter, alone."""
    model, bank = lively_causal("llama"), adapters()
    inputs, names = batch(9, seed=2), ["a", "b", "c", "c", "a", "b", "b", "a", "c"]
    multi = MultiAdapterModel(model, bank)
    assert multi.family is causal
    out, index = multi.generate(inputs, multi.adapter_ids(names), max_new_tokens=6)
    candidates = [torch.tensor([5, 1]), torch.tensor([7, 9, 1])]
    scores, _ = multi.score_candidates(inputs, multi.adapter_ids(names), candidates)
    for i, name in enumerate(names):
        width = int(inputs["attention_mask"][i].sum())
        one = {k: v[i:i + 1, :width] for k, v in inputs.items()}
        wrapped = PromptedModel(model, bank[name], causal)
        ref, routing = wrapped.generate(one, 6, synced_gpus=False)
        assert out[i, : ref.shape[1]].tolist() == ref[0].tolist() and index[i] == routing.index[0], (i, name)
        torch.testing.assert_close(scores[i], wrapped.score_candidates(one, candidates)[0][0], rtol=1e-5, atol=1e-5)
    assert len({tuple(r.tolist()) for r in out}) > 4
