"""tools/bench/griffin.py end to end at a tiny size: every mode of both families (T5's decoder FF, a causal LM's
MLPs) runs as users run it and prints every row. Timings are never asserted (shared CI machines)."""
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.launch import REPO

pytestmark = pytest.mark.multiprocess

RUNS = {  # name: the tool's arguments, each mode at its tiny size
    "t5-quality": ["quality", "--steps", "3", "--batch", "4", "--eval_examples", "4"],
    "t5-speed": ["speed", "--shape", "tiny", "--new_tokens", "2", "--repeats", "1"],
    "t5-ffspeed": ["ffspeed", "--ff_shape", "tiny", "--repeats", "1", "--calls", "2"],
    "causal-quality": ["quality", "--family", "causal", "--eval_examples", "10"],
    "causal-speed": ["speed", "--family", "causal", "--shape", "tiny", "--new_tokens", "2", "--repeats", "1",
                     "--clock", "cpu"],
    "causal-ffspeed": ["ffspeed", "--family", "causal", "--ff_shape", "tiny", "--repeats", "1", "--calls", "2",
                       "--selector", "magnitude"],
}
RHOS = [0.5, 0.25]


@pytest.fixture(scope="module")
def rows() -> dict:
    """{name: the JSON rows `python -m tools.bench.griffin` printed for RUNS[name]}, two runs at a time."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def run(args):
        return subprocess.run([sys.executable, "-m", "tools.bench.griffin", *args], capture_output=True, text=True,
                              env=env, cwd=REPO, timeout=600)

    with ThreadPoolExecutor(2) as pool:
        procs = dict(zip(RUNS, pool.map(run, RUNS.values())))
    out = {}
    for name, proc in procs.items():
        assert proc.returncode == 0, f"{name}: {proc.stderr[-3000:]}"
        out[name] = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return out


def test_quality_reports_the_full_model_and_every_selector_at_each_rho(rows):
    t5 = [r for r in rows["t5-quality"] if "rho" in r]
    assert [(r["rho"], r["selector"]) for r in t5] == [(1.0, "full")] + [(rho, s) for rho in RHOS
                                                                         for s in ("flocking", "magnitude", "random")]
    causal = rows["causal-quality"]
    assert [(r["rho"], r["selector"]) for r in causal] == [(1.0, "full")] + [
        (rho, s) for rho in RHOS for s in ("flocking", "magnitude", "random", "oracle")]
    full = causal[0]
    assert full["exact_match"] == 100.0 and full["d_ff"] == 128  # the shipped small Llama answers every one
    for r in causal[1:]:
        assert r["delta_nll"] == pytest.approx(r["nll_after_first"] - full["nll_after_first"], abs=1e-3)
        assert set(r["exact_match_per_operation"]) == {"copy", "reverse", "sort", "count", "classify"}
        assert 0 <= r["token_accuracy"] <= 100


def test_speed_reports_each_batch_and_rho(rows):
    for name, family in (("t5-speed", "seq2seq"), ("causal-speed", "causal")):
        found = [(r["family"], r["batch"], r["rho"], r["selector"]) for r in rows[name]]
        assert found == [(family, b, rho, "flocking" if rho < 1 else "full") for b in (1, 16) for rho in (1.0, *RHOS)]
        assert all(isinstance(r["ms_per_token"], float) for r in rows[name])
        assert {r["clock"] for r in rows[name]} == {"cpu" if family == "causal" else "wall"}


def test_ffspeed_takes_the_path_of_its_selector(rows):
    for name, pruned in (("t5-ffspeed", "per-example"), ("causal-ffspeed", "shared")):
        found = [(r["ff_shape"], r["batch"], r["rho"], r["path"]) for r in rows[name]]
        assert found == [("tiny", b, rho, "full" if rho == 1 else pruned) for b in (1, 16) for rho in (1.0, *RHOS)]
        assert all(r["us_per_call"] > 0 for r in rows[name])
