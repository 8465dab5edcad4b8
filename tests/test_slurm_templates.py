"""The shipped `slurm/smop_t5xl.sh` itself, submitted with sbatch to a real one-node Slurm cluster.

What a CPU box lacks is overridden the way a user would: sbatch options (one node, 2 ranks, no GPUs, one
CPU per rank) beat the template's #SBATCH lines, and its knobs come from the environment of sbatch (the
tiny preset and overrides, the CPU ds_config). The cluster is started once for the module by
`tools/cluster/local_slurm.sh start` and always stopped, pass or fail (the fixture of tests/tools/test_local_slurm.py).
CI must have run `tools/cluster/local_slurm.sh install` as root first.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

from tests.launch import REPO, TINY, events
from tests.tools.test_local_slurm import TIMINGS, job_info, run, slurm  # noqa: F401  (slurm: the cluster fixture)

pytestmark = pytest.mark.cluster

TEMPLATE = REPO / "slurm" / "smop_t5xl.sh"
FINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}
# One node, 2 ranks and no GPUs instead of the template's 2 nodes x 4 GPUs. The time limit must exceed the
# template's --signal=B:USR1@600 lead, or the pre-emption signal comes at once (seen with --time=10).
CPU_BOX = ["--nodes=1", "--ntasks-per-node=2", "--gpus-per-node=0", "--cpus-per-task=1", "--time=30"]


def submit(root: Path, run_name: str, overrides: list[str]) -> tuple[str, Path, Path]:
    """sbatch the shipped template; returns (job id, its output_dir, its log)."""
    log = root / f"{run_name}.log"
    env = {**os.environ, "PYTHON": sys.executable, "PRESET": "configs/tiny.yaml",
           "DS_CONFIG": "ds_configs/cpu_zero3.json", "OVERRIDES": " ".join(TINY + overrides),
           "RUN_NAME": run_name, "OUTPUT_ROOT": str(root), "OMP_NUM_THREADS": "1"}
    proc = run(["sbatch", "--parsable", *CPU_BOX, f"--output={log}", TEMPLATE], cwd=REPO, env=env)
    job_id = proc.stdout.strip().split(";")[0]
    return job_id, root / f"{run_name}-{job_id}", log


def wait_final(job_id: str, log: Path, timeout: float) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while (info := job_info(job_id)).get("JobState") not in FINAL:
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} not finished after {timeout} s: {info}\n{_tail(log)}")
        time.sleep(0.5)
    return info


def _tail(log: Path) -> str:
    return log.read_text()[-4000:] if log.exists() else f"(no log at {log})"


def test_shipped_template_trains_on_two_ranks(slurm):
    t0 = time.monotonic()
    job_id, out, log = submit(slurm, "t5xl-ci", [])
    info = wait_final(job_id, log, timeout=400)
    TIMINGS["smop_t5xl.sh sbatch -> COMPLETED"] = time.monotonic() - t0
    assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0"), f"{info}\n{_tail(log)}"
    run_info = json.loads((out / "run_info.json").read_text())
    assert run_info["world_size"] == 2 and run_info["slurm_job_id"] == job_id
    assert [e["step"] for e in events(out, "train")] == [1, 2, 3, 4]
    assert events(out, "eval")[-1]["num_examples"] == 16
    text = log.read_text()
    assert "2 ranks on 1 node(s)" in text and "finished with exit code 0" in text, text[-3000:]


def test_preemption_signal_requeues_and_resumes_without_lost_or_repeated_steps(slurm):
    """USR1 to the batch shell (what --signal=B:USR1@600 sends before the time limit) mid-run: the shell
    forwards it, the trainer saves and exits with the requeue code, the job requeues itself, and the second
    run resumes in the same output_dir: every step is logged exactly once."""
    steps = 40
    t0 = time.monotonic()
    job_id, out, log = submit(slurm, "t5xl-preempt", [f"train.max_steps={steps}"])
    deadline = time.monotonic() + 300
    while not ((out / "metrics.jsonl").exists() and len(events(out, "train")) >= 2):
        assert job_info(job_id).get("JobState") not in FINAL, _tail(log)
        assert time.monotonic() < deadline, f"no training steps logged\n{_tail(log)}"
        time.sleep(0.2)
    run(["scancel", "--signal=USR1", "--batch", job_id])
    info = wait_final(job_id, log, timeout=400)
    TIMINGS["smop_t5xl.sh pre-empted, requeued -> COMPLETED"] = time.monotonic() - t0
    text = log.read_text()
    assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0"), f"{info}\n{text[-4000:]}"
    assert info["Restarts"] == "1", info
    assert "batch shell got SIGUSR1" in text and "asked to be requeued" in text, text[-4000:]
    assert "restart 1:" in text, text[-4000:]  # the second run's banner, appended to the same log
    logged = [e["step"] for e in events(out, "train")]
    assert logged == list(range(1, steps + 1)), logged
    assert logged[-1] == steps and len(set(logged)) == len(logged)
