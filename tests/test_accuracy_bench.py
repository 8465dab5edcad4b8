"""The offline accuracy benchmark, reduced: pretrain a tiny instructed T5, tune SMoP on the
instruction-free mixture through the real entry point, and check learning and routing."""
import json

import pytest

from tools import accuracy_bench, pretrain_tiny, synthetic


def test_mixture_data_is_recognisable_by_region(tmp_path):
    accuracy_bench.write_data(tmp_path, seed=0, train_per_task=5, val_per_task=2)
    records = [json.loads(line) for line in (tmp_path / "train.jsonl").read_text().splitlines()]
    assert len(records) == 20
    for r in records:
        task = synthetic.subtask_of(r["idx"])
        assert {w[0] for w in r["input"].split()} == {synthetic.MIXTURE[task]}  # one region per sub-task
        digits = [int(w[1]) for w in r["input"].split()]
        assert r["target"] == synthetic.apply(task, synthetic.MIXTURE[task], digits)
    assert synthetic.apply("reverse", "b", [3, 1, 5]) == "b5 b1 b3"
    assert synthetic.apply("sort", "c", [3, 1, 5]) == "c1 c3 c5"
    assert synthetic.apply("count", "d", [3, 1, 5]) == "three"


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    out = tmp_path_factory.mktemp("pretrained")
    report = pretrain_tiny.main(["--out", str(out), "--steps", "500", "--d-model", "32", "--layers", "2",
                                 "--batch", "32", "--lr", "0.005"])
    return out, report


def test_pretraining_is_deterministic_and_learns(pretrained, tmp_path):
    out, report = pretrained
    assert report["count"] > 50 and report["classify"] > 50  # chance: 25% and ~50%
    assert (out / "model.safetensors").exists() and (out / "tokenizer_config.json").exists()


def test_smop_learns_the_mixture_and_routes_by_sub_task(pretrained, tmp_path):
    model, _ = pretrained
    results = accuracy_bench.main(["--model", str(model), "--methods", "smop-4x5", "--seeds", "0",
                                   "--steps", "60", "--train-per-task", "100", "--val-per-task", "10",
                                   "--work", str(tmp_path)])
    r = results["smop-4x5"][0]
    # Chance on the mixture is ~6%: a uniform guess of the count word is right 1 time in 4, sequences ~never.
    # This reduced run (seeded, single-threaded: deterministic) scored 20.0 when the bound was set; the full
    # benchmark in docs/benchmark-accuracy.md is the measurement, this only guards against no learning.
    assert r["mean"] >= 15, r
    assert r["purity"] >= 0.75 and r["prompts_used"] >= 2, r["routing"]
    assert r["trainable_params"] == 4 * 5 * 32 + 32 * 4 and r["encoder_length"] > 5
