"""Truncation, padding, the (seed, step) data order and evaluation shards."""
import pytest
import torch

from trainer.data.batch import LengthGroupedOrder, TrainOrder, collate, encode, encode_inputs, eval_shards, pad
from trainer.data.tasks import Example
from trainer.data.tokenizer import train_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    texts = [f"word{i} and more words number {i % 7}" for i in range(200)]
    return train_tokenizer(texts, vocab_size=120, whole_words=("yes", "no"))


def test_truncation_keeps_eos_and_counts_prompt_positions(tokenizer):
    long = Example(" ".join(f"word{i}" for i in range(100)), "yes", 0, 0)
    short = Example("word1", "no", 1, 1)
    data = encode([long, short], [0, 0], tokenizer, max_source_length=20, prompt_length=5, max_target_length=4)
    assert len(data.input_ids[0]) == 20 - 5  # l prompt positions + input + </s> = max_source_length
    assert data.input_ids[0][-1] == tokenizer.eos_token_id and data.input_ids[1][-1] == tokenizer.eos_token_id
    assert data.truncated == 1
    assert data.labels[0] == tokenizer("yes", add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
    assert len(data.labels[0]) == 2  # label words are single pieces in the embedded tokenizer


TEMPLATE = ("{% for m in messages %}<|user|> {{ m['content'] }} <|end|>{% endfor %}"
            "{% if add_generation_prompt %} <|assistant|>{% endif %}")


def test_causal_inputs_start_with_bos_and_keep_the_final_eos(tokenizer):
    tokenizer.bos_token = tokenizer.convert_ids_to_tokens(3)  # a stand-in BOS: the trained tokenizer has none
    try:
        ids, cut = encode_inputs(["word1 word2", " ".join(f"word{i}" for i in range(50))], tokenizer, 8, bos=True)
    finally:
        tokenizer.bos_token = None
    assert [row[0] for row in ids] == [3, 3] and [row[-1] for row in ids] == [tokenizer.eos_token_id] * 2
    assert len(ids[1]) == 9 and cut == 1  # BOS + 7 tokens + </s>: room 8 includes the BOS
    plain, _ = encode_inputs(["word1 word2"], tokenizer, 8)
    assert plain[0] == ids[0][1:]  # without bos: the seq2seq family's encoding


def test_chat_template_wraps_the_input_and_is_cut_inside_the_template(tokenizer):
    tokenizer.chat_template = TEMPLATE
    try:
        ids, cut = encode_inputs(["word1 word2", " ".join(f"word{i}" for i in range(60))], tokenizer, 30,
                                 chat_template=True)
        full = tokenizer.apply_chat_template([{"role": "user", "content": "word1 word2"}], add_generation_prompt=True,
                                             tokenize=True, return_dict=False)
        assert ids[0] == list(full) and ids[0][-1] != tokenizer.eos_token_id  # the assistant's turn is open
        assert cut == 1 and len(ids[1]) <= 31  # room 30 + the one token the input's </s> would take
        assert ids[1][:2] == ids[0][:2] and ids[1][-3:] == ids[0][-3:]  # the text was cut, not the template
    finally:
        tokenizer.chat_template = None


def test_pad_right_pads_to_the_longest_row():
    ids, mask = pad([[5, 6, 1], [7, 1]], 0)
    assert ids.tolist() == [[5, 6, 1], [7, 1, 0]] and mask.tolist() == [[1, 1, 1], [1, 1, 0]]
    assert pad([[4], [1, 2]], -100)[0].tolist() == [[4, -100], [1, 2]] and ids.dtype == torch.long


def test_collate_pads_inputs_and_ignores_label_padding(tokenizer):
    data = encode([Example("word1 word2 word3", "yes", 0, 0), Example("word4", "no", 1, 1)], [0, 1], tokenizer,
                  64, 5, 8)
    batch = collate(data, [0, 1], tokenizer.pad_token_id)
    assert batch["input_ids"].shape == batch["attention_mask"].shape
    assert batch["attention_mask"][1].sum() == len(data.input_ids[1])
    assert (batch["input_ids"][1][batch["attention_mask"][1] == 0] == tokenizer.pad_token_id).all()
    assert batch["task_ids"].tolist() == [0, 1]


def test_order_is_a_function_of_seed_and_step_and_covers_each_epoch():
    order = TrainOrder(10, 4, seed=3)
    first = [order.global_indices(s) for s in range(5)]
    assert [TrainOrder(10, 4, seed=3).global_indices(s) for s in (4, 0)] == [first[4], first[0]]
    flat = [i for batch in first for i in batch]
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:20]) == list(range(10))
    assert flat[:10] != flat[10:20]  # each epoch is reshuffled
    assert TrainOrder(10, 4, seed=4).global_indices(0) != first[0]


def test_micro_batches_split_the_global_batch_the_same_way_for_any_world_size():
    one = TrainOrder(100, 8, 0).micro_batches(0, rank=0, world=1, micro=4)
    two = [TrainOrder(100, 8, 0).micro_batches(0, rank=r, world=2, micro=4) for r in range(2)]
    assert one == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert two == [[[0, 1, 2, 3]], [[4, 5, 6, 7]]]
    four = [TrainOrder(100, 16, 0).micro_batches(0, rank=r, world=2, micro=4) for r in range(2)]
    assert sorted(i for rank in four for m in rank for i in m) == list(range(16))


def test_noise_is_shared_by_all_ranks_and_differs_per_step():
    order = TrainOrder(100, 8, 0)
    assert torch.equal(order.noise(3, 4), TrainOrder(100, 8, 0).noise(3, 4))
    assert not torch.equal(order.noise(3, 4), order.noise(4, 4))


def _padded(order, lengths, steps, micro):
    """Padded input positions per real one over `steps`, micro batches of `micro` rows (dynamic padding)."""
    real = padded = 0
    for s in range(steps):
        rows = [lengths[i] for i in order.global_indices(s)]
        for m in range(0, len(rows), micro):
            real += sum(rows[m: m + micro])
            padded += max(rows[m: m + micro]) * len(rows[m: m + micro])
    return padded / real - 1


def test_length_grouping_keeps_each_epoch_and_pads_less():
    gen = torch.Generator().manual_seed(0)
    lengths = (torch.randn(96, generator=gen).exp() * 40).long().clamp(4, 400).tolist()
    plain, grouped = TrainOrder(96, 8, seed=1), LengthGroupedOrder(TrainOrder(96, 8, seed=1), lengths, window=4)
    epoch = [i for s in range(12) for i in grouped.global_indices(s)]
    assert sorted(epoch) == list(range(96))  # a window holds its steps' examples: epochs stay whole
    for w in range(3):  # ... and each window exactly the examples the plain order gives it
        window = range(4 * w, 4 * w + 4)
        assert sorted(i for s in window for i in grouped.global_indices(s)) == \
            sorted(i for s in window for i in plain.global_indices(s))
    again = LengthGroupedOrder(TrainOrder(96, 8, seed=1), lengths, window=4)
    assert [again.global_indices(s) for s in (13, 2, 0)] == [grouped.global_indices(s) for s in (13, 2, 0)]
    spans = sorted((min(lengths[i] for i in b), max(lengths[i] for i in b)) for b in map(grouped.global_indices, range(4)))
    assert all(hi <= next_lo for (_, hi), (next_lo, _) in zip(spans, spans[1:]))  # batches cut a sorted window
    assert _padded(grouped, lengths, 24, micro=4) < 0.5 * _padded(plain, lengths, 24, micro=4)
    assert grouped.noise(5, 4).equal(plain.noise(5, 4))
    assert grouped.micro_batches(5, 1, 2, 2) == plain.micro_batches(5, 1, 2, 2)


@pytest.mark.parametrize("n, world, batch", [(10, 2, 4), (7, 3, 2), (1, 2, 8), (16, 2, 8)])
def test_eval_shards_predict_each_example_once_in_equal_numbers_of_batches(n, world, batch):
    shards = [eval_shards(n, r, world, batch) for r in range(world)]
    assert len({len(s) for s in shards}) == 1
    seen = sorted(i for s in shards for b in s for i in b)
    assert seen == list(range(n))
