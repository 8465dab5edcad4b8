"""Task mixtures: sampling rates, and a batch order that is a pure function of (seed, step)."""
from collections import Counter

import pytest

from tests.launch import events, run_trainer
from trainer.config import DataConfig, Mixing
from trainer.data.batch import Encoded, LengthGroupedOrder, TrainOrder
from trainer.data.mixture import MixtureOrder, build_order, mixing_rates
from tests.launch import FIXTURES


def test_rates_proportional_and_temperature():
    assert mixing_rates([300, 100], Mixing.PROPORTIONAL, 2.0) == pytest.approx([0.75, 0.25])
    # T=2: sqrt(400)=20, sqrt(100)=10 -> 2/3, 1/3
    assert mixing_rates([400, 100], Mixing.TEMPERATURE, 2.0) == pytest.approx([2 / 3, 1 / 3])
    assert mixing_rates([400, 100], Mixing.TEMPERATURE, 1.0) == pytest.approx([0.8, 0.2])
    assert mixing_rates([400, 100], Mixing.TEMPERATURE, 1e6) == pytest.approx([0.5, 0.5], abs=1e-4)


def interleaved(sizes):
    """Task ids with the tasks' examples interleaved, so the code cannot rely on contiguous blocks."""
    ids, counts = [], list(sizes)
    while any(counts):
        for t, left in enumerate(counts):
            if left:
                ids.append(t)
                counts[t] -= 1
    return ids


def test_order_is_a_pure_function_of_seed_and_step():
    task_ids = interleaved([50, 7])
    walked = MixtureOrder(task_ids, [0.5, 0.5], global_batch=8, seed=3)
    sequence = [walked.global_indices(s) for s in range(12)]
    assert MixtureOrder(task_ids, [0.5, 0.5], 8, 3).global_indices(9) == sequence[9]  # resume at step 9
    assert walked.global_indices(4) == sequence[4]  # and a jump back
    assert MixtureOrder(task_ids, [0.5, 0.5], 8, 4).global_indices(9) != sequence[9]  # the seed matters


def test_tasks_drawn_at_their_rates_and_each_task_cycles_through_epochs():
    task_ids = interleaved([200, 10])
    rates = mixing_rates([200, 10], Mixing.TEMPERATURE, 2.0)  # ~0.817, ~0.183 (proportional: 0.952)
    order = MixtureOrder(task_ids, rates, global_batch=32, seed=0)
    drawn = [i for s in range(100) for i in order.global_indices(s)]
    share = sum(task_ids[i] == 1 for i in drawn) / len(drawn)
    assert share == pytest.approx(rates[1], abs=0.02)
    small = [i for i in drawn if task_ids[i] == 1]
    for epoch in range(len(small) // 10):  # every block of 10 draws of the small task is one whole epoch
        assert sorted(small[epoch * 10: (epoch + 1) * 10]) == [i for i, t in enumerate(task_ids) if t == 1]
    assert max(Counter(drawn).values()) > 1 and len(set(drawn)) == 210


def test_micro_batches_and_noise_match_train_order():
    order, plain = MixtureOrder([0, 1, 0, 1], [0.5, 0.5], 8, 1), TrainOrder(4, 8, 1)
    assert order.micro_batches(3, 1, 2, 2) == plain.micro_batches(3, 1, 2, 2)
    assert order.noise(3, 4).equal(plain.noise(3, 4))


def test_build_order_chooses_by_mixing_and_grouping():
    def data(task_ids):
        return Encoded([None] * len(task_ids), task_ids, [[1] * (i + 1) for i in range(len(task_ids))], [], 0)

    cfg = DataConfig(task="rte,cb", mixing=Mixing.TEMPERATURE)
    assert isinstance(build_order(cfg, data([0, 0, 1]), 2, 4, 0), MixtureOrder)
    assert type(build_order(cfg, data([0, 0, 0]), 1, 4, 0)) is TrainOrder  # one task: nothing to mix
    cfg.mixing = Mixing.PROPORTIONAL
    assert type(build_order(cfg, data([0, 0, 1]), 2, 4, 0)) is TrainOrder  # the shuffled union is proportional
    cfg.group_by_length = 3
    grouped = build_order(cfg, data([0, 0, 1]), 2, 4, 0)
    assert isinstance(grouped, LengthGroupedOrder) and grouped.window == 3 and grouped.lengths == [1, 2, 3]


def test_a_task_without_training_examples_is_an_error():
    with pytest.raises(ValueError, match="task 1 of the mixture has no training examples"):
        MixtureOrder([0, 0], [0.5, 0.5], 4, 0)


@pytest.mark.multiprocess
def test_stopped_and_resumed_mixture_run_equals_an_uninterrupted_one(tmp_path):
    """Real processes: the resumed run recomputes the task draws of steps 0..3 and carries on exactly."""
    fixtures = FIXTURES
    args = ["train.max_steps=6", "checkpoint.every=2", "model.dropout=0", "data.task=rte,cb,copa",
            f"data.data_dir={fixtures}", "data.mixing=temperature", "data.temperature=3"]
    ref, out = tmp_path / "ref", tmp_path / "resumed"
    run_trainer(ref, *args)
    stopped = run_trainer(out, *args, "checkpoint.stop_at=3", check=False)
    assert stopped.returncode == 3, stopped.stderr[-3000:]
    run_trainer(out, *args)
    a = {e["step"]: (e["loss"], e["routing_table"]) for e in events(ref, "train")}
    b = {e["step"]: (e["loss"], e["routing_table"]) for e in events(out, "train")}
    assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5, 6]
    for step in a:
        assert a[step][0] == pytest.approx(b[step][0], abs=1e-6) and a[step][1] == b[step][1]
