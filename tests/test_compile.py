"""train.compile=true (trainer/runtime/compile.py) changes how the backbone's blocks run, not what they compute.

One-layer T5 and two steps, to keep Inductor's compile short on 2 CPU cores (about 2.5 minutes for both
cases with a warm Inductor cache on the loaded shared machine; more when cold). Dropout off: a compiled
block draws dropout masks from Inductor's random stream.
"""
import pytest

from tests.probes.step_probe import run_probe, write_ds_config

pytestmark = pytest.mark.multiprocess

SMALL = ["--steps", "2", "model.dropout=0", "model.tiny.num_layers=1"]
# Inductor fuses and reorders the block's float32 arithmetic: the losses agree to float rounding, not bits.
LOSS_RTOL = 1e-5


@pytest.mark.parametrize("stage", [0, 3], ids=["replicated", "zero3"])
def test_compiled_blocks_give_the_eager_losses(tmp_path, stage):
    ds = f"ds_config={write_ds_config(tmp_path, stage, False)}"
    eager = run_probe(tmp_path / "eager", *SMALL, ds, "train.compile=false")
    compiled = run_probe(tmp_path / "compiled", *SMALL, ds, "train.compile=true")
    print(f"\nstage {stage}: eager {eager['losses']}, compiled {compiled['losses']}")
    assert compiled["compiled_blocks"] == 2 and eager["compiled_blocks"] == 0  # encoder and decoder block
    assert compiled["losses"] == pytest.approx(eager["losses"], rel=LOSS_RTOL)
    assert eager["losses"][0] != eager["losses"][1]  # the step moved the parameters
