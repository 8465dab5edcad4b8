"""The offline accuracy benchmark (tools/bench/accuracy.py, tools/bench/accuracy_report.py), reduced, and the
determinism of tools/assets/pretrain_tiny.py."""
import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import pytest

from tools.bench import accuracy as accuracy_bench
from tools.bench import accuracy_report
from tests.launch import REPO



def test_collapse_verdict_counts_distinct_majority_prompts():
    spread = {"copy": [0.9, 0.1, 0, 0], "reverse": [0, 1, 0, 0], "sort": [0, 0.4, 0.6, 0], "count": [0, 0, 0.7, 0.3]}
    assert accuracy_report.majority_prompts(spread) == {"copy": 0, "reverse": 1, "sort": 2, "count": 2}
    assert accuracy_report.routing_verdict(spread) == {"distinct": 3, "collapsed": False}
    two = {**spread, "sort": [0, 1, 0, 0], "count": [0.2, 0.5, 0.3, 0]}  # majorities 0, 1, 1, 1
    assert accuracy_report.routing_verdict(two) == {"distinct": 2, "collapsed": True}
    assert accuracy_report.routing_verdict(None) is None  # an unrouted method


def test_step_time_leaves_out_start_up_and_evaluations():
    # 10 steps per log event at 0.5 s/step; start-up adds 7 s before step 10, the evaluation after step 30 9 s.
    elapsed = {10: 12.0, 20: 17.0, 30: 22.0, 40: 36.0, 50: 41.0}
    trains = [{"step": s, "elapsed_s": t} for s, t in elapsed.items()]
    assert accuracy_bench.step_time(trains, eval_steps={30}) == 0.5


def test_lr_choice_is_the_best_final_dev_average_and_never_a_failed_run():
    sweep = {0.03: {"dev_final": 40.0}, 0.1: {"dev_final": 55.0}, 0.3: {"dev_final": 55.0}, 1.0: {"failed": "exit 1"}}
    assert accuracy_bench.choose_lr(sweep) == 0.1  # ties: the first in the grid
    assert accuracy_bench.choose_lr({0.1: {"dev_final": 1.0}, 0.3: {"dev_final": 2.0}}) == 0.3


@pytest.mark.multiprocess
def test_reduced_benchmark_learns_and_smop_does_not_collapse(tmp_path):
    doc = tmp_path / "bench.md"
    results = accuracy_bench.main(["--arms", "smop-kmeans", "prompt-tuning-5", "--seeds", "0", "1",
                                   "--fixed-lr", "0.3", "--steps", "60", "--eval-every", "30",
                                   "--train-per-task", "200", "--val-per-task", "25", "--jobs", "2",
                                   "--work", str(tmp_path / "work"), "--doc", str(doc)])
    smop, pt = results["summary"]["smop-kmeans"], results["summary"]["prompt-tuning-5"]
    # Bounds from a deterministic run (one thread per run, seeded): test exact match 77.0 / 83.0 for
    # smop-kmeans on seeds 0 / 1 and 12.0 / 10.0 for prompt-tuning-5 when they were set. Chance is ~6%
    # (a uniform count word is right 1 time in 4, sequences ~never). The full benchmark
    # (docs/benchmark-accuracy.md) is the measurement; this guards against no learning and collapse.
    assert min(smop["per_seed"]) >= 60 and min(pt["per_seed"]) >= 8, (smop["per_seed"], pt["per_seed"])
    assert [v["collapsed"] for v in smop["routing"]] == [False, False], results["runs"]["smop-kmeans"]
    assert pt["routing"] == [None, None]
    assert len(results["runs"]["smop-kmeans"][0]["dev_curve"]) == 2  # steps 30 and 60
    # Cost columns: the router adds exactly one d x k product to 5-token prompt tuning's FLOPs.
    assert smop["trainable_params"] == 4 * 5 * 64 + 64 * 4 and pt["trainable_params"] == 5 * 64
    assert smop["flops"] - pt["flops"] == 2 * 64 * 4
    assert smop["s_per_step"] > 0 and smop["peak_memory_mb"] > 0
    # The report: the generated block and a real dev-curve picture.
    text = doc.read_text()
    assert accuracy_report.MARKERS[0] in text and "| smop-kmeans | 0.3 |" in text and "collapsed" in text
    image = matplotlib.image.imread(tmp_path / "bench-dev.png")
    assert image.shape[:2] == (600, 1400) and image[..., :3].std() > 0.05


@pytest.mark.multiprocess
def test_reduced_benchmark_on_the_causal_family_learns(tmp_path):
    """--family causal: the shipped small Llama, the same mixture and protocol."""
    results = accuracy_bench.main(["--family", "causal", "--arms", "smop-kmeans", "--seeds", "0", "--fixed-lr", "0.3",
                                   "--steps", "60", "--eval-every", "30", "--train-per-task", "200",
                                   "--val-per-task", "25", "--jobs", "1", "--work", str(tmp_path / "work")])
    smop = results["summary"]["smop-kmeans"]
    # Test exact match 28.0 on seed 0 when this bound was set; chance is ~6%. The full benchmark
    # (docs/benchmark-accuracy-causal.md) is the measurement.
    assert smop["per_seed"][0] >= 15 and smop["routing"][0]["collapsed"] is False, results["runs"]
    assert "model.name_or_path=tiny-pretrained-causal" in results["runs"]["smop-kmeans"][0]["overrides"]
    assert smop["trainable_params"] == 4 * 5 * 64 + 64 * 4


def _pretrain(out: Path, seed: int, family: str) -> tuple[bytes, list[str]]:
    """The weights a fresh process writes, and the losses it logged (steps 0 and 29)."""
    cmd = [sys.executable, "-m", "tools.assets.pretrain_tiny", "--out", str(out), "--seed", str(seed),
           "--steps", "30", "--batch", "8", "--d-model", "16", "--layers", "1", "--threads", "1", "--family", family]
    proc = subprocess.run(cmd, check=True, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          cwd=REPO)
    return (out / "model.safetensors").read_bytes(), re.findall(r"step \d+: loss (\S+)", proc.stdout)


@pytest.mark.multiprocess
@pytest.mark.parametrize("family", ["seq2seq", "causal"])
def test_pretraining_is_bit_identical_for_a_seed_and_differs_across_seeds(tmp_path, family):
    (first, losses), (again, losses_again), (other, _) = (_pretrain(tmp_path / name, seed, family)
                                                          for name, seed in (("a", 0), ("b", 0), ("c", 1)))
    # The steps trained (the loss fell), so the equal bytes below cover training, not only the initial weights.
    assert len(losses) == 2 and float(losses[1]) < float(losses[0]), losses
    assert losses_again == losses
    assert hashlib.sha256(first).digest() == hashlib.sha256(again).digest()
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (tmp_path / "b" / "tokenizer.json").read_bytes()
    assert first != other
