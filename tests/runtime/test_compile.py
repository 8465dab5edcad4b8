"""train.compile=true (trainer/runtime/compile.py) changes how the backbone's blocks run, not what they compute.

One-layer T5 and two steps, to keep Inductor's compile short on 2 CPU cores. Dropout off: a compiled block
draws dropout masks from Inductor's random stream. The module's four probes (eager and compiled, per ZeRO
stage) run side by side, as many at a time as there are cores: each is one single-threaded process that
mostly imports and compiles (72 s for the four on a shared 2-core machine at load 3.5; 92 s one by one).
"""
import os
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.probes.step_probe import run_probe, write_ds_config

pytestmark = pytest.mark.multiprocess

SMALL = ["--steps", "2", "model.dropout=0", "model.tiny.num_layers=1"]
# Inductor fuses and reorders the block's float32 arithmetic: the losses agree to float rounding, not bits.
LOSS_RTOL = 1e-5
STAGES = {"replicated": 0, "zero3": 3}


@pytest.fixture(scope="module")
def probes(tmp_path_factory) -> dict:
    """{(stage, compiled): probe.json} for both stages, eager and compiled."""
    root = tmp_path_factory.mktemp("compile")
    cases = [(stage, compiled) for compiled in (True, False) for stage in STAGES.values()]  # the slow ones first

    def probe(case):
        stage, compiled = case
        ds = f"ds_config={write_ds_config(root, stage, False)}"
        out = root / f"stage{stage}-{'compiled' if compiled else 'eager'}"
        return run_probe(out, *SMALL, ds, f"train.compile={str(compiled).lower()}")

    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        return dict(zip(cases, pool.map(probe, cases)))


@pytest.mark.parametrize("stage", STAGES.values(), ids=STAGES.keys())
def test_compiled_blocks_give_the_eager_losses(probes, stage):
    eager, compiled = probes[stage, False], probes[stage, True]
    print(f"\nstage {stage}: eager {eager['losses']}, compiled {compiled['losses']}")
    assert compiled["compiled_blocks"] == 2 and eager["compiled_blocks"] == 0  # encoder and decoder block
    assert compiled["losses"] == pytest.approx(eager["losses"], rel=LOSS_RTOL)
    assert eager["losses"][0] != eager["losses"][1]  # the step moved the parameters
