"""Evaluation with the ZeRO-3 backbone gathered once (trainer/runtime/eval_gather.py), on 2 real gloo ranks.

The same training run twice, evaluated in rank mode on a mixture whose ReCoRD part is generated (greedy,
synced_gpus): once gathered once for the whole evaluation (the default: the tiny backbone fits), once with
the per-module gathers of before (eval.gather_backbone=false), at steps 2 and 4. Predictions must not
change at all, and training after the first evaluation must go on as before.
"""
import pytest

from tests.launch import REPO, events, run_trainer

pytestmark = pytest.mark.multiprocess

FIXTURES = REPO / "tests" / "fixtures" / "superglue"
TASKS = ["rte", "cb", "multirc", "record"]
ARGS = ["model.dropout=0", "train.global_batch_size=8", f"data.data_dir={FIXTURES}", "data.max_eval_examples=0",
        f"data.task={','.join(TASKS)}", "eval.mode=rank", "eval.batch_size=2", "train.eval_every=2"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    gathered, per_module = tmp_path_factory.mktemp("gathered"), tmp_path_factory.mktemp("per_module")
    out = run_trainer(gathered, *ARGS, nproc=2)
    run_trainer(per_module, *ARGS, "eval.gather_backbone=false", nproc=2)
    return gathered, per_module, out.stdout


def test_gathered_evaluation_predicts_exactly_what_per_module_gathering_did(runs):
    gathered, per_module, _ = runs
    assert [e["backbone_gathered"] for e in events(gathered, "eval_gather")] == [True, True]
    assert [e["backbone_gathered"] for e in events(per_module, "eval_gather")] == [False, False]
    for task in TASKS:  # rank classification for three, greedy generation for ReCoRD
        for step in (2, 4):
            name = f"predictions-{task}-{step}.jsonl"
            assert (gathered / name).read_text() == (per_module / name).read_text(), name
    metrics = [{k: v for k, v in events(d, "eval")[-1].items() if "/" in k} for d in (gathered, per_module)]
    assert metrics[0] == metrics[1] and metrics[0]


def test_training_after_a_gathered_evaluation_continues_identically(runs):
    """The gather hooks come back after the evaluation at step 2: steps 3 and 4 train as without it."""
    gathered, per_module, _ = runs
    losses = [[e["loss"] for e in events(d, "train")] for d in (gathered, per_module)]
    assert losses[0] == losses[1] and len(losses[0]) == 4


def test_no_placement_notice_for_the_tiny_cpu_run(runs):
    """The start-up check predicts nothing clearly faster here (tests/perf/test_plan.py has the positive case)."""
    assert "placement:" not in runs[2]
