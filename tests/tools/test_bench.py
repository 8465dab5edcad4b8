"""tools/bench/speed.py end to end on the tiny size: every figure is there and the ratios follow from the figures.

Timing targets are never asserted here (shared CI machines); tools/bench/speed.py reports them.
"""
import json
import os
import signal
import subprocess
import sys
from argparse import Namespace
from dataclasses import replace
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.launch import REPO
from tools.bench.speed import arm_spec
from tools.bench.common import SIZES, size_shape
from tools.bench.worker import trainer_overrides
from trainer.perf.flops import method_flops
from trainer.perf.shapes import CAUSAL_SHAPES, CausalShape

pytestmark = pytest.mark.multiprocess

FIGURES = ("step_time_s", "samples_per_s", "tokens_per_s", "peak_memory_bytes", "peak_memory_bytes_per_rank",
           "phases_s", "latency_s_per_example", "inference_flops_per_example", "train_flops_per_example", "mfu",
           "flops_source", "ratios")


SEQ_LEN, TARGET_LEN, VARIED_TARGET_LEN, GEN_TOKENS = 16, 8, 4, 2
SHORT = ["--warmup", "1", "--steps", "2", "--phase-steps", "1", "--infer-repeats", "1", "--gen-tokens", str(GEN_TOKENS),
         "--seq-len", str(SEQ_LEN), "--target-len", str(TARGET_LEN), "--micro-batch", "2"]
RUNS = {  # the arguments of the benchmark runs this module checks
    "fixed": ["--size", "tiny", "--arms", "smop-4x5,bare,full-ft,hf-peft-20", "--baseline", "smop-4x5", *SHORT],
    "varied": ["--size", "tiny", "--arms", "smop-4x5,smop-4x5-grouped", "--lengths", "varied", "--baseline",
               "smop-4x5", "--warmup", "1", "--steps", "4", "--phase-steps", "1", "--infer-repeats", "0",
               "--seq-len", "64", "--target-len", str(VARIED_TARGET_LEN), "--micro-batch", "2"],
    "causal": ["--size", "tiny-causal", "--arms", "smop-4x5,pt-20,hf-peft-20,bare", "--baseline", "smop-4x5", *SHORT],
}


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> dict:
    """{name: (finished `python -m tools.bench` process, its --out directory)} for RUNS, started together:
    each is mostly its arms' start-up, one after another, whose single-threaded parts leave a core idle."""
    outs = {name: tmp_path_factory.mktemp(name) for name in RUNS}
    with ThreadPoolExecutor(len(RUNS)) as pool:
        procs = {name: pool.submit(run_whole, [sys.executable, "-m", "tools.bench", *args, "--out", str(outs[name])],
                                   timeout=420)
                 for name, args in RUNS.items()}
        return {name: (procs[name].result(), outs[name]) for name in RUNS}


def run_whole(cmd: list, timeout: int) -> subprocess.CompletedProcess:
    """subprocess.run in a session of its own: on timeout the whole session (the benchmark, its torchrun
    launchers and their ranks) is killed, not the benchmark alone, and the timeout is raised."""
    with subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


def check_measured_arm(arm: dict, base: dict, seq_len: int, target_len: int) -> None:
    """A trainer or bare arm on 2 ranks: every figure there, and throughput and ratios that follow from them."""
    assert arm["status"] == "ok", arm
    for key in FIGURES:
        assert key in arm, (arm["arm"], key)
    assert arm["world_size"] == 2 and len(arm["peak_memory_bytes_per_rank"]) == 2
    assert arm["peak_memory_bytes"] == max(arm["peak_memory_bytes_per_rank"]) > 0
    assert {"forward", "backward", "communication", "optimizer"} <= set(arm["phases_s"])
    assert all(v >= 0 for v in arm["phases_s"].values())
    assert arm["mfu"] is None  # no MFU without a GPU peak
    assert arm["samples_per_s"] == pytest.approx(arm["global_batch"] / arm["step_time_s"])
    assert arm["tokens_per_s"] == pytest.approx(arm["samples_per_s"] * (seq_len + target_len))
    r = arm["ratios"]
    assert r["samples_per_s"] == pytest.approx(arm["samples_per_s"] / base["samples_per_s"])
    assert r["tokens_per_s"] == pytest.approx(arm["tokens_per_s"] / base["tokens_per_s"])
    assert r["peak_memory"] == pytest.approx(arm["peak_memory_bytes"] / base["peak_memory_bytes"])


def test_bench_tiny_two_arms_writes_every_figure_and_consistent_ratios(bench):
    seq_len, target_len = SEQ_LEN, TARGET_LEN
    proc, out = bench["fixed"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "bench.json").read_text())
    for key in ("command", "versions", "device", "git_revision", "baseline", "targets"):
        assert key in report, key
    assert report["versions"]["torch"] and report["versions"]["deepspeed"] and report["device"]["type"] == "cpu"
    arms = report["arms"]
    assert arms["full-ft"]["status"] == "ok"
    # Hugging Face Trainer + PEFT prompt tuning, the comparison of the speed goals: measured, never excused
    peft = arms["hf-peft-20"]
    assert peft["status"] == "ok", peft
    assert peft["trainable_params"] == 20 * 128 and peft["samples_per_s"] > 0 and peft["latency_s_per_example"] > 0
    assert peft["ratios"]["samples_per_s"] == pytest.approx(peft["samples_per_s"] / arms["smop-4x5"]["samples_per_s"])
    base = arms["smop-4x5"]
    for name in ("smop-4x5", "bare"):
        check_measured_arm(arms[name], base, seq_len, target_len)
    assert base["ratios"]["samples_per_s"] == 1.0
    assert "data" in base["phases_s"] and base["latency_s_per_example"] > 0
    assert arms["bare"]["latency_s_per_example"] is None and arms["bare"]["ratios"]["latency"] is None
    assert base["trainable_params"] == arms["bare"]["trainable_params"] == 4 * 5 * 128 + 4 * 128  # prompts, router
    bare = arms["bare"]
    assert bare["trainer_overhead_paired"] == pytest.approx(bare["paired_trainer_step_s"] / bare["paired_bare_step_s"] - 1)
    overhead = next(t for t in report["targets"] if t["target"].startswith("trainer overhead"))
    assert overhead["value"] == pytest.approx(bare["trainer_overhead_paired"])
    for name in ("smop-4x5", "bare", "full-ft", "hf-peft-20"):
        assert name in proc.stdout
    assert "ratio to smop-4x5" in proc.stdout


def test_bench_tiny_causal_measures_every_arm_with_the_causal_flops(bench):
    """--size tiny-causal: a random Llama (grouped-query attention) built by the trainer's model.family=causal
    overrides; the trainer's arms, the bare loop and HF Trainer + PEFT CAUSAL_LM prompt tuning all measured
    (none excused), FLOPs from the causal count."""
    proc, out = bench["causal"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "bench.json").read_text())
    assert report["size"] == "tiny-causal" and report["shape"]["family"] == "causal"
    arms = report["arms"]
    assert list(arms) == ["smop-4x5", "pt-20", "hf-peft-20", "bare"]
    for name, arm in arms.items():
        assert arm["status"] == "ok", (name, arm)
    shape = size_shape(SIZES["tiny-causal"])
    assert isinstance(shape, CausalShape) and (shape.kv_heads, shape.num_heads) == (2, 4)
    base = arms["smop-4x5"]
    for name in ("smop-4x5", "pt-20", "bare"):
        arm = arms[name]
        check_measured_arm(arm, base, SEQ_LEN, TARGET_LEN)
        assert arm["backbone_params"] == shape.params  # the tied random Llama of the size's shape, no more
        k, l = (4, 5) if name != "pt-20" else (1, 20)
        method = "smop" if k > 1 else "prompt_tuning"
        assert arm["inference_flops_per_example"] == method_flops(method, shape, SEQ_LEN, GEN_TOKENS, k, l)
        assert arm["train_flops_per_example"] == 2 * method_flops(method, shape, SEQ_LEN, TARGET_LEN, k, l)
    assert base["trainable_params"] == arms["bare"]["trainable_params"] == 4 * 5 * 128 + 4 * 128
    assert arms["pt-20"]["trainable_params"] == 20 * 128 and arms["pt-20"]["latency_s_per_example"] > 0
    peft = arms["hf-peft-20"]  # PEFT's CAUSAL_LM prompt: L x d, before the one sequence
    assert peft["trainable_params"] == 20 * 128 and peft["samples_per_s"] > 0 and peft["latency_s_per_example"] > 0
    assert peft["inference_flops_per_example"] == arms["pt-20"]["inference_flops_per_example"]
    assert peft["ratios"]["samples_per_s"] == pytest.approx(peft["samples_per_s"] / base["samples_per_s"])
    bare = arms["bare"]
    assert bare["trainer_overhead_paired"] == pytest.approx(bare["paired_trainer_step_s"] / bare["paired_bare_step_s"] - 1)
    for name in arms:
        assert name in proc.stdout
    assert "# tiny-causal" in proc.stdout


def test_bench_varied_lengths_grouped_arm_pads_less(bench):
    """--lengths varied: real tokens and the mean step time make the throughput; -grouped pads less."""
    target_len = VARIED_TARGET_LEN
    proc, out = bench["varied"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "bench.json").read_text())
    plain, grouped = report["arms"]["smop-4x5"], report["arms"]["smop-4x5-grouped"]
    assert report["lengths"] == "varied" and (plain["group_by_length"], grouped["group_by_length"]) == (0, 50)
    for arm in (plain, grouped):
        assert arm["status"] == "ok", arm
        assert 8 <= arm["input_tokens_per_example"] < 64
        real = arm["input_tokens_per_example"] + target_len
        assert arm["tokens_per_s"] == pytest.approx(arm["samples_per_s"] * real)
        assert arm["step_time_s"] >= sum(arm["step_times_s_rank0"]) / 4 * (1 - 1e-9)  # slowest rank's mean
    assert grouped["input_pad_fraction"] < plain["input_pad_fraction"]
    assert "pad %" in proc.stdout and "(varied lengths)" in proc.stdout


def test_arm_names_parse_to_trainer_settings(tmp_path):
    args = Namespace(warmup=1, steps=1, phase_steps=1, infer_repeats=0, override=[], lengths="fixed")
    size = SIZES["tiny"]
    smop = arm_spec("smop-8x10", args, size, False, tmp_path)
    assert (smop["kind"], smop["method"], smop["num_prompts"], smop["prompt_length"]) == ("trainer", "smop", 8, 10)
    pt = arm_spec("pt-100", args, size, False, tmp_path)
    assert (pt["method"], pt["num_prompts"], pt["prompt_length"]) == ("prompt_tuning", 1, 100)
    assert arm_spec("hf-peft-20", args, size, False, tmp_path)["kind"] == "hf_peft"
    zero2 = arm_spec("smop-4x5-zero2", args, size, False, tmp_path)
    ds = json.loads(Path(zero2["ds_config"]).read_text() if Path(zero2["ds_config"]).is_absolute()
                    else (REPO / zero2["ds_config"]).read_text())
    assert ds["zero_optimization"]["stage"] == 2
    assert not any(k.startswith("stage3_") for k in ds["zero_optimization"])
    assert "unknown arm" in arm_spec("nonsense", args, size, False, tmp_path)["error"]
    grouped = arm_spec("pt-20-grouped", args, size, False, tmp_path)
    assert (grouped["method"], grouped["prompt_length"], grouped["group_by_length"]) == ("prompt_tuning", 20, 50)
    compiled = arm_spec("smop-4x5-zero2-compile", args, size, False, tmp_path)
    assert compiled["compile"] is True and compiled["ds_config"] == zero2["ds_config"]
    assert "train.compile=true" in trainer_overrides(compiled, size)
    assert "train.compile=false" in trainer_overrides(smop, size)


def test_llama_8b_size_is_llama_3_1_8b_through_the_trainers_overrides(tmp_path):
    """The GPU size: Llama-3.1-8B's shape from the shape table, built as the trainer's random tiny Llama (tied
    output layer: the one difference), S=512, T=8, bf16 ZeRO-3."""
    args = Namespace(warmup=1, steps=1, phase_steps=1, infer_repeats=0, override=[], lengths="fixed")
    size = SIZES["llama-8b"]
    overrides = set(trainer_overrides(arm_spec("pt-100", args, size, True, tmp_path), size))
    assert {"model.name_or_path=tiny", "model.family=causal", "model.tiny.d_model=4096", "model.tiny.d_ff=14336",
            "model.tiny.d_kv=128", "model.tiny.num_heads=32", "model.tiny.kv_heads=8", "model.tiny.num_layers=32",
            "model.tiny.vocab_size=128256", "ds_config=ds_configs/zero3_bf16.json", "train.micro_batch_size=8",
            "prompt.prompt_length=100"} <= overrides
    assert (size.seq_len, size.target_len) == (512, 8)
    assert size_shape(size) == replace(CAUSAL_SHAPES["llama-3.1-8b"], tied=True)
