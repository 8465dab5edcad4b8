"""The real entry point, end to end, in real processes."""
import json
import subprocess
import sys

import matplotlib.image as plt_image
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from transformers import T5Config, T5ForConditionalGeneration

from tests.launch import REPO, events, run_trainer
from trainer.runtime.distributed import free_port
from trainer.data.tokenizer import train_tokenizer

pytestmark = pytest.mark.multiprocess


def test_deepspeed_launcher_two_ranks_writes_the_run_files(tmp_path):
    proc = run_trainer(tmp_path, "train.eval_every=2", "monitor.plots=true", nproc=2, launcher="deepspeed")
    for name in ("config.yaml", "ds_config.json", "run_info.json", "metrics.jsonl", "method_final.safetensors",
                 "tokenizer/tokenizer_config.json", "predictions-rte-4.jsonl", "predictions-rte-2.jsonl"):
        assert (tmp_path / name).exists(), name
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    ds = json.loads((tmp_path / "ds_config.json").read_text())
    assert (ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"], ds["train_batch_size"]) == (4, 1, 8)
    info = json.loads((tmp_path / "run_info.json").read_text())
    assert info["world_size"] == 2 and len(info["git_revision"] or "") == 40
    train = events(tmp_path, "train")
    assert [e["step"] for e in train] == [1, 2, 3, 4]
    for e in train:
        assert e["loss"] > 0 and e["lr"] > 0 and len(e["routing_fraction"]) == 4
        assert sum(e["routing_fraction"]) == pytest.approx(1.0)
        assert 0 <= e["routing_entropy"] <= 1 and 100 < e["peak_memory_mb"] < 10_000  # rank 0's RSS
    evals = events(tmp_path, "eval")
    assert [e["step"] for e in evals] == [2, 4]
    assert all(0 <= e["rte/accuracy"] <= 100 and e["num_examples"] == 16 for e in evals)
    predictions = [json.loads(line) for line in (tmp_path / "predictions-rte-4.jsonl").read_text().splitlines()]
    assert sorted(p["idx"] for p in predictions) == list(range(16))
    assert {p["prediction"] for p in predictions} <= {"entailment", "not_entailment"}
    assert "eval at step 4: rte/accuracy" in proc.stdout and "routing: fractions" in proc.stdout
    # Rank 0 drew the pictures at the end: real PNGs of the run, and the same figures in TensorBoard.
    names = ["loss_lr", "routing", "routing_tables", "eval", "step_times"]
    assert f"pictures: {tmp_path / 'plots'}/ (" in proc.stdout
    for name in names:
        image = plt_image.imread(tmp_path / "plots" / f"{name}.png")
        assert image.shape[:2] == (500, 1000) and image[..., :3].std() > 0.05, name
    acc = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"images": 0}).Reload()
    assert sorted(acc.Tags()["images"]) == sorted(f"plots/{name}" for name in names)
    assert {"train/routing_entropy", "train/noisy_routing_entropy", "train/routing_fraction/0",
            "train/noisy_routing_fraction/0", "train/step_time_s/0", "train/step_time_s/1"} <= set(acc.Tags()["scalars"])
    assert all(len(e["step_time_s"]) == 2 and min(e["step_time_s"]) > 0 for e in train)  # each rank's own time


def test_logged_routing_counts_are_the_sum_of_every_rank(tmp_path):
    """Clean (routing_*) and noisy (noisy_routing_*) fractions are each the sum of every rank's counts."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           "-m", "tests.probes.routing_counts", str(tmp_path), "prompt.router_input=raw"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    per_rank = [json.loads((tmp_path / f"counts-rank{r}.json").read_text()) for r in range(2)]
    logged = events(tmp_path, "train")[-1]
    for key, prefix in (("clean_counts", "routing_"), ("counts", "noisy_routing_")):
        counts = [torch.tensor(c[key]) for c in per_rank]
        assert all(c.sum() == 3 * 4 for c in counts)  # each rank routed its own 3 steps x 4 examples
        total = (counts[0] + counts[1]).sum(0).double()
        torch.testing.assert_close(torch.tensor(logged[prefix + "fraction"], dtype=torch.float64), total / total.sum())


def test_local_save_pretrained_backbone_and_tokenizer_dir(tmp_path):
    """The path a cluster user takes with a downloaded checkpoint, exercised with a directory we write."""
    tok = train_tokenizer([f"sentence {i} about cats and engines" for i in range(300)],
                          whole_words=("entailment", "not_entailment"))
    model_dir = tmp_path / "t5-local"
    config = T5Config(vocab_size=len(tok), d_model=32, d_ff=64, d_kv=8, num_heads=4, num_layers=2,
                      feed_forward_proj="gated-gelu", decoder_start_token_id=0)
    T5ForConditionalGeneration(config).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    out = tmp_path / "run"
    proc = run_trainer(out, f"model.name_or_path={model_dir}", nproc=2)
    assert "backbone " + str(model_dir) in proc.stdout
    info = json.loads((out / "run_info.json").read_text())
    total = sum(p.numel() for p in T5ForConditionalGeneration(config).parameters())
    assert info["backbone_params"] == total
    # ZeRO-3 loaded the checkpoint into partitions: rank 0 keeps about half (partitions are padded).
    assert 0.45 * total < info["backbone_params_on_rank0"] < 0.55 * total
    assert events(out, "eval")[-1]["num_examples"] == 16


def test_missing_model_directory_is_a_one_line_error(tmp_path):
    proc = run_trainer(tmp_path / "run", f"model.name_or_path={tmp_path}/nope", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == f"error: model.name_or_path: no such directory '{tmp_path}/nope'"


@pytest.mark.parametrize("overrides", [
    ["prompt.init=vocab", "train.optimizer=adafactor"],
    ["prompt.init=text", "prompt.init_text=The cat sleeps", "prompt.routing=gumbel", "prompt.balance_coef=0.01"],
], ids=["vocab-adafactor", "text-gumbel-balance"])
def test_inits_that_read_the_partitioned_embedding(tmp_path, overrides):
    """Vocabulary and text inits gather the ZeRO-3 embedding on both ranks and start identical."""
    run_trainer(tmp_path, *overrides, "train.check_replicas_every=1", "train.max_steps=2", nproc=2)
    checks = events(tmp_path, "replica_check")
    assert len(checks) == 2 and all(c["identical"] for c in checks)


def test_activation_checkpointing_gives_the_same_losses(tmp_path):
    """Recomputing blocks in backward changes memory and time, not the numbers (fp32, dropout off)."""
    plain, ckpt = tmp_path / "plain", tmp_path / "ckpt"
    run_trainer(plain, "model.dropout=0", "train.max_steps=3", nproc=2)
    run_trainer(ckpt, "model.dropout=0", "train.max_steps=3", "train.activation_checkpointing=true", nproc=2)
    losses = [[e["loss"] for e in events(out, "train")] for out in (plain, ckpt)]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5) and len(losses[0]) == 3
    flags = [json.loads((out / "run_info.json").read_text())["activation_checkpointing"] for out in (plain, ckpt)]
    assert flags == [False, True]
