"""P-tuning, IAPT and full fine-tuning through the real entry point: 2 gloo ranks under ZeRO-3 against a
single-process reference, with the same global batch of 8 at every step."""
import pytest
import torch
from safetensors.torch import load_file

from tests.launch import events, run_trainer

pytestmark = pytest.mark.multiprocess

COMMON = ["model.dropout=0", "train.global_batch_size=8", "train.max_steps=5"]


def pair(tmp_path_factory, name, *overrides):
    one, two = tmp_path_factory.mktemp(f"{name}-one"), tmp_path_factory.mktemp(f"{name}-two")
    run_trainer(one, *COMMON, *overrides, nproc=1)
    run_trainer(two, *COMMON, *overrides, nproc=2)
    return one, two


def losses(out):
    return [e["loss"] for e in events(out, "train")]


@pytest.fixture(scope="module")
def finetune(tmp_path_factory):
    # eval.mode=generate: generation through the training engine (whose .config is DeepSpeed's, not T5's)
    return pair(tmp_path_factory, "ft", "prompt.method=full_finetune", "train.lr=0.003", "train.warmup_ratio=0",
                "eval.mode=generate")


@pytest.fixture(scope="module")
def iapt_runs(tmp_path_factory):
    return pair(tmp_path_factory, "iapt", "prompt.method=iapt", "prompt.iapt_bottleneck=8", "train.lr=0.01",
                "train.check_replicas_every=1")


def test_full_finetune_two_ranks_match_one_rank(finetune):
    """Proves the engine path's loss scaling: ZeRO-3's averaged, accumulation-scaled gradients equal ours."""
    one, two = finetune
    assert losses(one) == pytest.approx(losses(two), rel=1e-4, abs=1e-5)


def test_full_finetune_trains_the_backbone(finetune):
    _, two = finetune
    loss = losses(two)
    assert loss[-1] < loss[0]
    before, after = [e["norm"] for e in events(two, "backbone")]
    assert before != pytest.approx(after, rel=1e-6)
    setup = events(two, "setup")[0]
    assert setup["trainable_params"] == 52_672 and setup["prompt_positions"] == 0  # the whole tiny backbone
    saved = torch.load(two / "backbone_final.bin", map_location="cpu")
    assert saved["shared.weight"].shape[1] == 32 and saved["shared.weight"].numel() > 0  # gathered, not a shard
    assert events(two, "eval")[-1]["num_examples"] == 16  # generated with the trained backbone


def test_iapt_hooks_fire_under_zero3_and_match_one_rank(iapt_runs):
    one, two = iapt_runs
    assert losses(one) == pytest.approx(losses(two), rel=1e-5, abs=1e-6)
    checks = events(two, "replica_check")
    assert len(checks) == 5 and all(c["identical"] and not c["partitioned"] for c in checks)
    final = load_file(two / "method_final.safetensors")
    # The up projections start at zero: only gradients through the ZeRO-3 encoder blocks, i.e. hooks that
    # fired, can move them, in every layer.
    assert final["generators.0.up.weight"].abs().sum() > 0 and final["generators.1.up.weight"].abs().sum() > 0
    torch.testing.assert_close(final["generators.1.up.weight"],
                               load_file(one / "method_final.safetensors")["generators.1.up.weight"],
                               rtol=1e-4, atol=1e-6)
    assert events(two, "setup")[0]["prompt_positions"] == 4


def test_ptuning_lstm_runs_on_two_ranks(tmp_path):
    run_trainer(tmp_path, "prompt.method=ptuning", "prompt.num_prompts=1", "prompt.ptuning_encoder=lstm",
                "prompt.ptuning_hidden=16", "train.check_replicas_every=2", nproc=2)
    assert all(c["identical"] for c in events(tmp_path, "replica_check"))
    final = load_file(tmp_path / "method_final.safetensors")
    assert {"prompts", "encoder.lstm.weight_ih_l0"} <= final.keys()
