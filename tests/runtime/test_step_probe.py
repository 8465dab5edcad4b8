"""The CPU twin of tests/test_gpu.py's host-wait test: inside a training step the trainer's own code never
reads a device value on the host (the guard's flags and the non-finite skip stay on the device).

On the CPU a Python-level read (bool/item/tolist/float/int of a tensor) stands in for a device wait; the
recorder (tests/probes/step_probe.py) attributes each read to the innermost code outside torch.
"""
import pytest
import torch

from tests.probes.step_probe import HostReads, run_probe, step_difference, write_ds_config
from trainer.config import load_config
from trainer.optim import build_optimizer, masked_step
from trainer.methods.smop import SMoP


def _one_masked_step(optimizer_name: str, fused: bool = False) -> list[dict]:
    """Two masked steps of a small SMoP; returns the host reads recorded during the second."""
    cfg = load_config(None, [f"train.optimizer={optimizer_name}"]).train
    smop = SMoP(16, 4, 5)
    params = list(smop.parameters())
    opt = torch.optim.AdamW(params, lr=0.1, fused=True) if fused else build_optimizer(params, cfg)
    reads = HostReads(torch.device("cpu"))
    reads.install()
    try:
        for step in range(2):
            prompts, _ = smop(torch.randn(3, 6, 16), torch.ones(3, 6), torch.randn(3, 4))
            prompts.pow(2).sum().backward()
            reads.active = step == 1
            masked_step(opt, params, torch.tensor(True))
            reads.active = False
            opt.zero_grad()
    finally:
        reads.uninstall()
    assert torch.Tensor.__bool__ is HostReads(torch.device("cpu"))._real["__bool__"]  # restored
    return reads.found


def test_recorder_attributes_reads_to_the_code_that_makes_them():
    # Adafactor counts steps in a Python int, so masked_step reads `ok` on the host: a trainer read.
    found = _one_masked_step("adafactor")
    assert [(r["origin"], r["where"].split(":")[0], r["kind"]) for r in found] == \
        [("trainer", "trainer/optim.py", "__bool__")]
    # Fused AdamW (what build_optimizer picks on CUDA) keeps its step counter on the device: no read at all.
    assert _one_masked_step("adamw", fused=True) == []
    # The CPU's default (for-each) AdamW reads its step counter inside torch.optim, for masked_step's call.
    found = _one_masked_step("adamw")
    assert found and all(r["origin"] == "trainer" and r["via"].startswith("optim/") for r in found)


@pytest.mark.multiprocess
def test_training_steps_with_skips_make_no_trainer_host_reads(tmp_path):
    """4 steps of the real train_step under ZeRO-3, lr 1e30 with the default clipping: step 2's update
    overflows, steps 3 and 4 are non-finite and skipped on the device. The only trainer-side reads allowed
    on the CPU are those inside torch.optim's for-each AdamW (its step counter, a CPU tensor; fused AdamW,
    used on CUDA, has none: see above)."""
    probe = run_probe(tmp_path, "--steps", "4", "train.lr=1e30", "train.warmup_ratio=0", "model.dropout=0")
    assert probe["skipped"] == 2 and all(x == x for x in probe["losses"][:2])
    own = [r for r in probe["host_reads"] if r["origin"] == "trainer" and not (r["via"] or "").startswith("optim/")]
    assert own == [], own
    libraries = sorted({(r["origin"], r["where"]) for r in probe["host_reads"] if r["origin"] != "trainer"})
    print("\nhost reads made by libraries inside steps 2-4:", *libraries, sep="\n  ")


@pytest.mark.multiprocess
def test_bf16_step_within_the_gpu_tests_tolerance_of_fp32_on_cpu(tmp_path):
    """test_gpu's comparison, run on the CPU: from the same start, a ZeRO-3 step with a bf16 backbone (fp32
    SMoP) stays within the tolerances test_gpu asserts for CUDA of a replicated fp32 step."""
    from tests.test_gpu import GRAD_RTOL, LOSS_RTOL, UPDATE_COS

    state, common = tmp_path / "start.safetensors", ["--steps", "1", "model.dropout=0"]
    fp32_replicated, bf16_zero3 = write_ds_config(tmp_path, 0, False), write_ds_config(tmp_path, 3, True)
    ref = run_probe(tmp_path / "ref", *common, "--save-backbone", state, f"ds_config={fp32_replicated}")
    bf16 = run_probe(tmp_path / "bf16", *common, "--load-backbone", state, f"ds_config={bf16_zero3}")
    diff = step_difference(ref, bf16)
    print(f"\nZeRO-3 bf16 vs replicated fp32: {diff}")
    assert diff["same_start"] and bf16["backbone_dtype"] == "torch.bfloat16"
    assert bf16["trainable_dtypes"] == ["torch.float32"]
    assert diff["loss_rel"] <= LOSS_RTOL and diff["grad_rel"] <= GRAD_RTOL and diff["update_cos"] >= UPDATE_COS
    assert diff["grad_rel"] > 1e-4  # bf16 did round: the comparison can tell the two apart
