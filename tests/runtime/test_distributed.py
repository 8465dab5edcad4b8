"""Real multi-process runs: 2 gloo ranks under ZeRO-3 against a single-process reference."""
import json

import pytest
import torch
from safetensors.torch import load_file

from tests.launch import events, run_trainer

pytestmark = pytest.mark.multiprocess


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same global batch of 8 at every step: 1 rank x 2 micro batches of 4, and 2 ranks x 1 x 4; the router
    centred, started from k-means rows and in a parameter group of its own."""
    common = ["model.dropout=0", "train.global_batch_size=8", "train.check_replicas_every=1", "train.max_steps=5",
              "train.router_lr=0.05", "prompt.router_input=centered", "prompt.router_init=kmeans"]
    one = tmp_path_factory.mktemp("one")
    two = tmp_path_factory.mktemp("two")
    run_trainer(one, *common, nproc=1)
    run_trainer(two, *common, nproc=2)
    return one, two


def test_two_ranks_match_one_rank(runs):
    one, two = runs
    loss_one = [e["loss"] for e in events(one, "train")]
    loss_two = [e["loss"] for e in events(two, "train")]
    assert len(loss_one) == len(loss_two) == 5
    assert loss_one == pytest.approx(loss_two, rel=1e-5, abs=1e-6)
    assert loss_one[0] != loss_one[-1]  # the parameters moved: the comparison is not of a frozen state
    final_one, final_two = load_file(one / "method_final.safetensors"), load_file(two / "method_final.safetensors")
    assert final_one.keys() == final_two.keys() == {"prompts", "router.proj.weight", "router.center"}
    for name in final_one:
        torch.testing.assert_close(final_one[name], final_two[name], rtol=1e-5, atol=1e-6)
    # The centre is computed before step 0 from the data alone: the same vector on 1 and 2 ranks, not zero.
    assert torch.equal(final_one["router.center"], final_two["router.center"])
    assert final_one["router.center"].norm() > 0


def test_smop_parameters_replicated_fp32_identical_every_step(runs):
    _, two = runs
    checks = events(two, "replica_check")
    assert [c["step"] for c in checks] == [1, 2, 3, 4, 5]
    assert all(c["identical"] and c["dtypes"] == ["float32"] and not c["partitioned"] for c in checks)


def test_bf16_backbone_keeps_smop_fp32(tmp_path):
    """With a bf16 ds_config the backbone runs in bf16 while the prompts and router stay fp32."""
    run_trainer(tmp_path, "ds_config=ds_configs/cpu_zero3_bf16.json", "train.check_replicas_every=2", nproc=2)
    checks = events(tmp_path, "replica_check")
    assert checks and all(c["identical"] and c["dtypes"] == ["float32"] and not c["partitioned"] for c in checks)
    assert all(t.dtype == torch.float32 for t in load_file(tmp_path / "method_final.safetensors").values())
    assert json.loads((tmp_path / "run_info.json").read_text())["backbone_dtype"] == "bfloat16"


def test_zero2_replicates_the_backbone_and_matches_one_rank(tmp_path):
    """Below ZeRO-3 there is no engine (DeepSpeed asserts an optimizer for stage 1/2): every rank holds the
    whole bf16 backbone, the SMoP gradients are all-reduced by the trainer, and 2 ranks match 1 (here with
    length-grouped batches: the grouped order, too, is the same for any world size)."""
    common = ["ds_config=ds_configs/zero2_bf16.json", "model.dropout=0", "train.global_batch_size=8",
              "train.check_replicas_every=1", "data.group_by_length=2"]
    one, two = tmp_path / "one", tmp_path / "two"
    run_trainer(one, *common, nproc=1)
    proc = run_trainer(two, *common, nproc=2)
    assert "ZeRO stage 2" in proc.stdout
    info = json.loads((two / "run_info.json").read_text())
    assert info["world_size"] == 2 and info["backbone_dtype"] == "bfloat16"
    checks = events(two, "replica_check")
    assert len(checks) == 4 and all(c["identical"] and c["dtypes"] == ["float32"] for c in checks)
    loss_one = [e["loss"] for e in events(one, "train")]
    loss_two = [e["loss"] for e in events(two, "train")]
    assert loss_one == pytest.approx(loss_two, rel=1e-3) and loss_one[0] != loss_one[-1]


def test_xxl_parameter_offload_config_runs(tmp_path):
    """The T5-XXL ds_config (ZeRO-3, parameters offloaded to CPU) is accepted by the engine and trains."""
    proc = run_trainer(tmp_path, "ds_config=ds_configs/t5_xxl_zero3_offload_bf16.json", "train.max_steps=2")
    assert "ZeRO stage 3" in proc.stdout
    assert [e["step"] for e in events(tmp_path, "train")] == [1, 2]
    assert json.loads((tmp_path / "ds_config.json").read_text())["zero_optimization"]["offload_param"]["device"] == "cpu"
