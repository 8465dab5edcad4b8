"""smop-predict (trainer/cli/predict.py) as users run it: one device, and 2 ZeRO-3 ranks under the deepspeed
launcher (`deepspeed --module trainer.cli.predict`)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import random

import pytest
import torch
from transformers import AutoModelForCausalLM

from tests.launch import run_trainer
from tests.tiny_models import lively_t5
from tools.assets.synthetic import pretraining_pair
from trainer.cli.run_files import read_run, run_tokenizer
from trainer.inference.adapter import config_hash, save_adapter
from trainer.paths import EMBEDDED_DATA_DIR, model_location
from trainer.runtime.distributed import free_port
from trainer.methods.smop import SMoP
from trainer.data.readers import load_split
from trainer.data.tasks import get_task
from tests.launch import REPO as ROOT

pytestmark = pytest.mark.multiprocess

PREDICT = "trainer.cli.predict"  # run as a module from ROOT: the checkout under test
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def predict(*args, nproc=1, timeout=300):
    if nproc == 1:
        cmd = [sys.executable, "-m", PREDICT]
    else:
        cmd = ["deepspeed", "--num_gpus", str(nproc), "--master_port", str(free_port()), "--module", PREDICT]
    return subprocess.run(cmd + [str(a) for a in args], capture_output=True, text=True, env=ENV, timeout=timeout,
                          cwd=ROOT)


def read(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny run whose dense router sends examples to different prompts (so routing is a real check)."""
    out = tmp_path_factory.mktemp("run")
    run_trainer(out, "model.dropout=0", "train.max_steps=60", "train.micro_batch_size=8", "prompt.routing=dense",
                "data.max_eval_examples=48")
    return out


@pytest.fixture(scope="module")
def lively(tmp_path_factory, trained):
    """A save_pretrained backbone dir with varied generations, two adapters (l=5, l=3), a mixed jsonl."""
    root = tmp_path_factory.mktemp("lively")
    tokenizer = run_tokenizer(trained, read_run(trained))
    model = lively_t5(vocab_size=len(tokenizer))
    model.save_pretrained(root / "backbone")
    tokenizer.save_pretrained(root / "backbone")
    torch.manual_seed(3)
    for name, length in (("x", 5), ("y", 3)):
        meta = {"method": "smop", "task": "jsonl", "tokenizer": str(root / "backbone"),
                "backbone": {"name_or_path": str(root / "backbone"), "config_hash": config_hash(model.config)}}
        save_adapter(root / name, SMoP(32, 4, length), meta)
    examples = load_split(get_task("rte"), EMBEDDED_DATA_DIR, "val", train=False)[:21]
    with open(root / "inputs.jsonl", "w") as f:
        for i, ex in enumerate(examples):
            f.write(json.dumps({"input": ex.input, "adapter": "y" if i % 3 == 0 else "x", "idx": f"q{i}"}) + "\n")
    return root


def test_single_device_predictions_and_routing_match_the_trainers_eval(trained, tmp_path):
    out = tmp_path / "p.jsonl"
    proc = predict("--backbone", "tiny", "--run_dir", trained, "--adapter", trained / "adapter", "--task", "rte",
                   "--data_dir", EMBEDDED_DATA_DIR, "--split", "val", "--mode", "rank", "--output", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ours = {r["idx"]: r for r in read(out)}
    theirs = read(next(trained.glob("predictions-rte-*.jsonl")))
    assert len(theirs) == 48 and len(ours) == 128
    assert len({r["prompt"] for r in theirs}) > 1  # the router really chooses
    for r in theirs:
        assert (ours[r["idx"]]["prediction"], ours[r["idx"]]["prompt"]) == (r["prediction"], r["prompt"])
    scored = subprocess.run([sys.executable, "-m", "trainer.cli.evaluate", "--task", "rte", "--data_dir",
                             str(EMBEDDED_DATA_DIR), "--split", "val", "--predictions", str(out)],
                            capture_output=True, text=True, env=ENV, timeout=60, cwd=ROOT)
    assert scored.returncode == 0 and "accuracy" in json.loads(scored.stdout)


def test_zero3_two_ranks_equal_one_device_on_a_mixed_batch(lively, tmp_path):
    common = ["--backbone", lively / "backbone", "--adapter", f"x={lively / 'x'}", "--adapter", f"y={lively / 'y'}",
              "--input", lively / "inputs.jsonl", "--batch_size", 4, "--max_new_tokens", 10]
    one = predict(*common, "--output", tmp_path / "one.jsonl")
    assert one.returncode == 0, one.stderr[-3000:]
    two = predict(*common, "--output", tmp_path / "two.jsonl", "--ds_config", ROOT / "ds_configs/cpu_zero3.json",
                  nproc=2)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = read(tmp_path / "one.jsonl"), read(tmp_path / "two.jsonl")
    assert a == b
    assert [r["idx"] for r in a] == [f"q{i}" for i in range(21)]  # each input once, in input order
    assert [r["adapter"] for r in a][:3] == ["y", "x", "x"]
    assert len({len(r["prediction"].split()) for r in a}) > 1  # varied lengths: synced_gpus had work to do


def test_adapter_for_another_backbone_is_refused(trained, lively, tmp_path):
    proc = predict("--backbone", lively / "backbone", "--adapter", trained / "adapter", "--input",
                   lively / "inputs.jsonl", "--output", tmp_path / "p.jsonl", "--tokenizer", lively / "backbone")
    assert proc.returncode == 2
    assert "config hash" in proc.stderr and str(trained / "adapter") in proc.stderr
    assert not (tmp_path / "p.jsonl").exists()


def test_record_naming_an_unloaded_adapter_names_file_and_line(lively, tmp_path):
    bad = tmp_path / "in.jsonl"
    bad.write_text(json.dumps({"input": "a b", "adapter": "x"}) + "\n" + json.dumps({"input": "c", "adapter": "z"}))
    proc = predict("--backbone", lively / "backbone", "--adapter", f"x={lively / 'x'}", "--input", bad,
                   "--output", tmp_path / "p.jsonl")
    assert proc.returncode == 2 and f"{bad}:2: adapter 'z' is not loaded" in proc.stderr


def test_griffin_pruning_on_one_device_and_refused_under_zero3(lively, tmp_path):
    common = ["--backbone", lively / "backbone", "--adapter", f"x={lively / 'x'}", "--adapter", f"y={lively / 'y'}",
              "--input", lively / "inputs.jsonl", "--max_new_tokens", 10]
    full = predict(*common, "--output", tmp_path / "full.jsonl")
    pruned = predict(*common, "--output", tmp_path / "pruned.jsonl", "--griffin_rho", 0.25, "--griffin_window", 1)
    assert full.returncode == 0 and pruned.returncode == 0, pruned.stderr[-3000:]
    a, b = read(tmp_path / "full.jsonl"), read(tmp_path / "pruned.jsonl")
    assert [r["idx"] for r in a] == [r["idx"] for r in b]
    assert [r["prompt"] for r in a] == [r["prompt"] for r in b]  # routing happens before the decoder
    assert [r["prediction"] for r in a] != [r["prediction"] for r in b]
    refused = predict(*common, "--output", tmp_path / "z.jsonl", "--griffin_rho", 0.5, "--ds_config",
                      ROOT / "ds_configs/cpu_zero3.json")
    assert refused.returncode == 2 and "one device only" in refused.stderr


@pytest.fixture(scope="module")
def causal_adapters(tmp_path_factory):
    """Two adapters (l=4 and l=2: the shorter prompt is left-padded in a mixed batch) for the shipped small
    Llama, and a jsonl of its instructed language ("reverse : b3 b1 b5")."""
    root = tmp_path_factory.mktemp("causal")
    backbone = AutoModelForCausalLM.from_pretrained(model_location("tiny-pretrained-causal"))
    meta = {"method": "smop", "task": "jsonl", "tokenizer": "tiny-pretrained-causal",
            "backbone": {"name_or_path": "tiny-pretrained-causal", "config_hash": config_hash(backbone.config)}}
    torch.manual_seed(3)
    for name, length in (("x", 4), ("y", 2)):
        smop = SMoP(backbone.config.hidden_size, 2, length)
        with torch.no_grad():
            smop.prompts.mul_(0.1)  # near the embeddings' scale: the model still follows the instruction
        save_adapter(root / name, smop, meta)
    rng = random.Random(0)
    with open(root / "inputs.jsonl", "w") as f:
        for i in range(10):
            f.write(json.dumps({"input": pretraining_pair(rng)[0], "adapter": "y" if i % 3 == 0 else "x"}) + "\n")
    return root


def test_griffin_on_a_causal_backbone_selects_per_example(causal_adapters, tmp_path):
    """GRIFFIN over the prefill of the shipped small Llama, two adapters in one batch: at rho = 0.25 every
    example's prediction is the one it gets in a batch of its own (rho = 1 reproducing plain generation
    exactly is tests/inference/test_griffin.py's)."""
    common = ["--backbone", "tiny-pretrained-causal", "--adapter", f"x={causal_adapters / 'x'}", "--adapter",
              f"y={causal_adapters / 'y'}", "--input", causal_adapters / "inputs.jsonl", "--max_new_tokens", 8]
    runs = {"plain": [], "batched": ["--griffin_rho", 0.25, "--batch_size", 10],
            "alone": ["--griffin_rho", 0.25, "--batch_size", 1]}
    out = {}
    for name, extra in runs.items():
        proc = predict(*common, *extra, "--output", tmp_path / f"{name}.jsonl")
        assert proc.returncode == 0, proc.stderr[-3000:]
        out[name] = read(tmp_path / f"{name}.jsonl")
    assert out["batched"] == out["alone"]
    assert len({r["prediction"] for r in out["plain"]}) > 5  # the model answers each instruction its own way
    assert [r["prediction"] for r in out["batched"]] != [r["prediction"] for r in out["plain"]]  # pruning acts
    assert [r["prompt"] for r in out["batched"]] == [r["prompt"] for r in out["plain"]]  # routing precedes it
    refused = predict(*common, "--griffin_rho", 0.5, "--griffin_window", 2, "--output", tmp_path / "w.jsonl")
    assert refused.returncode == 2 and "--griffin_window: a T5 option" in refused.stderr


def test_single_device_predict_from_a_checkpoint_never_imports_deepspeed(lively, tmp_path):
    inputs = tmp_path / "in.jsonl"  # one adapter loaded: records may leave "adapter" out
    inputs.write_text("".join(json.dumps({"input": r["input"]}) + "\n" for r in read(lively / "inputs.jsonl")[:4]))
    argv = ["smop-predict", "--backbone", str(lively / "backbone"), "--adapter", f"x={lively / 'x'}", "--input",
            str(inputs), "--output", str(tmp_path / "p.jsonl"), "--max_new_tokens", "2"]
    code = ("import runpy, sys\n"
            f"sys.argv = {argv!r}\n"
            f"try:\n    runpy.run_module({PREDICT!r}, run_name='__main__', alter_sys=True)\n"
            "except SystemExit as e:\n    assert e.code in (0, None), e.code\n"
            "print('deepspeed' in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "False"
    assert len(read(tmp_path / "p.jsonl")) == 4
