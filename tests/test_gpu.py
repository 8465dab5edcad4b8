"""The CUDA code paths the CPU never executes: bf16 backbone with fp32 SMoP, pinned non-blocking copies,
CUDA events in the guard, fused AdamW, synced_gpus generation, checkpoint/resume with the CUDA RNG.

Marked `gpu` and skipped without CUDA; tools/gpu_check.sh runs them on a GPU machine
(`python -m pytest -m gpu tests`). Their CPU twins, in tests/runtime/test_step_probe.py, run the same probe and
comparisons on the CPU: the bf16-vs-fp32 tolerance, the host-read recorder, the trainer's own reads.
"""
import pytest
import torch

from tests.launch import events, run_trainer
from tests.probes.step_probe import run_probe, step_difference, write_ds_config

pytestmark = [pytest.mark.gpu, pytest.mark.multiprocess,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (tools/gpu_check.sh)")]

# bf16 keeps 8 bits of mantissa (relative rounding 2^-9 per operation); through a 2-layer T5 the loss and the
# gradients of a bf16 step stay within a few percent of the fp32 step (the CPU twin measures it).
LOSS_RTOL = 2e-2
GRAD_RTOL = 5e-2  # |g_bf16 - g_fp32| / |g_fp32| over all trainable parameters
UPDATE_COS = 0.95  # AdamW's first update is ~lr * sign(g): elements with near-zero gradients may flip


@pytest.mark.parametrize("stage", [2, 3], ids=["replicated", "zero3"])
def test_bf16_cuda_step_matches_fp32_cpu_step(tmp_path, stage):
    """Same start (the CPU run's backbone rounded to bf16, its SMoP), same batch and router noise, no dropout."""
    state = tmp_path / "start.safetensors"
    common = ["--steps", "1", "model.dropout=0"]
    cpu = run_probe(tmp_path / "cpu", *common, "--save-backbone", state,
                    f"ds_config={write_ds_config(tmp_path, stage, False)}", cpu=True)
    gpu = run_probe(tmp_path / "gpu", *common, "--load-backbone", state,
                    f"ds_config={write_ds_config(tmp_path, stage, True)}")
    assert cpu["device"] == "cpu" and gpu["device"].startswith("cuda")
    assert gpu["backbone_dtype"] == "torch.bfloat16" and gpu["trainable_dtypes"] == ["torch.float32"]
    diff = step_difference(cpu, gpu)
    print(f"\nstage {stage}: fp32 CPU vs bf16 CUDA step: {diff}")
    assert diff["same_start"]
    assert diff["loss_rel"] <= LOSS_RTOL and diff["grad_rel"] <= GRAD_RTOL and diff["update_cos"] >= UPDATE_COS


@pytest.mark.parametrize("stage", [2, 3], ids=["replicated", "zero3"])
def test_cuda_steps_never_wait_in_the_trainer_and_skip_on_device(tmp_path, stage):
    """lr 1e30, clipping on: steps 3 and 4 are non-finite and skipped with the decision on the device. No host read
    or CUDA synchronisation inside steps 2-4 comes from the trainer's code (torch.cuda.set_sync_debug_mode
    sees the C++ ones too); those made by transformers or DeepSpeed are printed, not failed."""
    found = run_probe(tmp_path, "--steps", "4", "train.lr=1e30", "train.warmup_ratio=0",
                      "model.dropout=0", f"ds_config={write_ds_config(tmp_path, stage, True)}")
    assert found["skipped"] == 2 and all(x == x for x in found["losses"][:2])
    assert found["optimizer"] == {"type": "AdamW", "fused": True, "state_devices": [found["device"]]}
    own = [r for r in found["host_reads"] if r["origin"] == "trainer"]
    assert own == [], own
    libraries = sorted({(r["origin"], r["where"], r["kind"][:60]) for r in found["host_reads"]})
    print(f"\nstage {stage}: host waits made by libraries inside steps 2-4:", *libraries, sep="\n  ")


def test_generate_with_synced_gpus_equals_plain_generate(tmp_path):
    """synced_gpus (what evaluation uses with 2+ ranks) adds a per-token all-reduce of the 'finished' flag;
    the ids must not change. Two ranks cannot share one GPU under NCCL, so: one rank, ZeRO-3, bf16."""
    found = run_probe(tmp_path, "--steps", "1", "--generate", "6", "model.dropout=0",
                      f"ds_config={write_ds_config(tmp_path, 3, True)}")
    synced, plain = found["generated"]["synced"], found["generated"]["plain"]
    assert synced == plain and len(synced) == 4 and all(len(row) >= 2 for row in synced)


def test_cuda_resume_reproduces_the_losses(tmp_path):
    """Stopped at step 3 and resumed to 6 equals an uninterrupted run, dropout on: the checkpoint restores
    the CUDA generator too (dropout draws on the device). bf16, ZeRO-3, one GPU."""
    steps = ["train.max_steps=6", "checkpoint.every=2", f"ds_config={write_ds_config(tmp_path, 3, True)}"]
    ref, out = tmp_path / "ref", tmp_path / "resumed"
    run_trainer(ref, *steps)
    stopped = run_trainer(out, *steps, "checkpoint.stop_at=3", check=False)
    assert stopped.returncode == 3, stopped.stderr[-3000:]
    run_trainer(out, *steps)
    a = {e["step"]: e["loss"] for e in events(ref, "train")}
    b = {e["step"]: e["loss"] for e in events(out, "train")}
    assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5, 6]
    delta = max(abs(a[s] - b[s]) for s in a)
    print(f"\nCUDA resume: max |dloss| = {delta:.3g}")
    assert delta <= 1e-4 and a[4] != a[6]
