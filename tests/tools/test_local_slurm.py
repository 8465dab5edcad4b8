"""Real Slurm on this machine: sbatch, requeue on a pre-emption signal, srun, mpirun.

A module-scoped fixture runs ``tools/cluster/local_slurm.sh start`` and always runs
``tools/cluster/local_slurm.sh stop`` afterwards, pass or fail. The module is never
skipped: without Slurm installed it fails and says to run
``tools/cluster/local_slurm.sh install`` (CI does that before pytest).

There is no accounting database, so job states are read with
``scontrol show job`` (records live for MinJobAge=300 s), not sacct.

Measured timings are printed at the end of the module (terminal summary).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests.launch import REPO as ROOT

pytestmark = pytest.mark.cluster

SCRIPT = ROOT / "tools" / "cluster" / "local_slurm.sh"
NEEDED = ("sbatch", "srun", "scontrol", "squeue", "scancel", "slurmctld", "slurmd", "munged")
TIMINGS: dict[str, float] = {}


def _which(name: str) -> str | None:
    # slurmctld/slurmd/munged live in /usr/sbin, which may be off a user's PATH.
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")


def run(args, timeout=60, check=True, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=timeout, **kw
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(map(str, args))} exited {proc.returncode}\n"
            f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        )
    return proc


def job_info(job_id: str) -> dict[str, str]:
    """Fields of `scontrol show job -o ID` (JobState, Restarts, ExitCode, ...)."""
    out = run(["scontrol", "show", "job", "-o", job_id]).stdout
    return dict(re.findall(r"(\w+)=(\S*)", out))


def wait_for(job_id: str, states: set[str], timeout: float) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while True:
        info = job_info(job_id)
        if info.get("JobState") in states:
            return info
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} not in {states} after {timeout} s: {info}")
        time.sleep(0.2)


def submit(script: Path, *extra: str) -> str:
    return run(["sbatch", "--parsable", *extra, script]).stdout.strip().split(";")[0]


def _report_timings(config) -> None:
    """Print the measured timings even though output capture is on."""
    tr = config.pluginmanager.get_plugin("terminalreporter")
    cap = config.pluginmanager.get_plugin("capturemanager")
    if tr is None or cap is None:
        return
    with cap.global_and_fixture_disabled():
        tr.write_line("")
        tr.write_line("local slurm timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in TIMINGS.items()))


def local_cluster(request, tmp_path_factory, nodes: int = 1):
    """Start the local cluster of `nodes` nodes, yield a scratch directory, and always stop it, pass or fail
    (a module fixture does `yield from local_cluster(...)`)."""
    missing = [n for n in NEEDED if _which(n) is None]
    if missing:
        pytest.fail(
            f"Slurm/munge not installed (missing: {', '.join(missing)}). "
            f"Run as root: {SCRIPT.relative_to(ROOT)} install",
            pytrace=False,
        )
    if os.geteuid() != 0:
        pytest.fail("the local Slurm cluster must be started as root", pytrace=False)
    name = "cluster" if nodes == 1 else f"{nodes}-node cluster"
    try:
        t0 = time.monotonic()
        proc = run([SCRIPT, "start", "--nodes", nodes], timeout=120, check=False)
        TIMINGS[f"{name} start"] = time.monotonic() - t0
        if proc.returncode != 0:
            pytest.fail(
                f"tools/cluster/local_slurm.sh start --nodes {nodes} failed ({proc.returncode}):\n"
                f"{proc.stdout}\n{proc.stderr}",
                pytrace=False,
            )
        yield tmp_path_factory.mktemp("slurm")
    finally:
        t0 = time.monotonic()
        proc = run([SCRIPT, "stop"], timeout=120, check=False)
        TIMINGS[f"{name} stop"] = time.monotonic() - t0
        _report_timings(request.config)
        assert proc.returncode == 0, f"stop failed:\n{proc.stdout}\n{proc.stderr}"


@pytest.fixture(scope="module")
def slurm(request, tmp_path_factory):
    yield from local_cluster(request, tmp_path_factory)


def test_sbatch_wait_trivial_job(slurm: Path):
    out = slurm / "trivial.out"
    script = slurm / "trivial.sh"
    script.write_text(
        "#!/bin/bash\n"
        f"#SBATCH -o {slurm}/trivial.log\n"
        f'echo "hello from $SLURM_JOB_ID" > {out}\n'
    )
    t0 = time.monotonic()
    proc = run(["sbatch", "--parsable", "--wait", script], timeout=60)
    TIMINGS["trivial sbatch --wait"] = time.monotonic() - t0
    job_id = proc.stdout.strip().split(";")[0]
    info = job_info(job_id)
    assert info["JobState"] == "COMPLETED", info
    assert info["ExitCode"] == "0:0", info
    assert out.read_text() == f"hello from {job_id}\n"


# A batch script that, on USR1, records it and requeues itself; on its second
# run (SLURM_RESTART_COUNT=1) it finishes. `sleep & wait` lets bash run the
# trap at once (a trap waits for a foreground command to finish).
REQUEUE_BODY = r"""
log=%(log)s
t0=$(date +%%s.%%N)
echo "run restart=${SLURM_RESTART_COUNT:-0} start=$t0" >> "$log"
on_usr1() {
    echo "usr1 restart=${SLURM_RESTART_COUNT:-0} at=$(date +%%s.%%N) after=$(awk -v a=$t0 -v b=$(date +%%s.%%N) 'BEGIN{print b-a}')" >> "$log"
    scontrol requeue "$SLURM_JOB_ID"   # the batch shell gets SIGTERM right after
    exit 0
}
trap on_usr1 USR1
if [ "${SLURM_RESTART_COUNT:-0}" -ge 1 ]; then
    echo "done restart=$SLURM_RESTART_COUNT" >> "$log"
    exit 0
fi
while true; do sleep 1 & wait $!; done
"""


def _requeue_script(path: Path, log: Path, header: str) -> Path:
    path.write_text("#!/bin/bash\n" + header + REQUEUE_BODY % {"log": log})
    return path


def _check_two_runs(log: Path) -> list[str]:
    lines = log.read_text().splitlines()
    kinds = [ln.split()[0] for ln in lines]
    assert kinds == ["run", "usr1", "run", "done"], lines
    assert "restart=0" in lines[0] and "restart=0" in lines[1], lines
    assert "restart=1" in lines[2] and lines[3] == "done restart=1", lines
    return lines


def test_signal_before_time_limit_requeues_job(slurm: Path):
    """--signal=B:USR1@55 with --time=1: the signal comes ~5 s after start plus
    slurmctld's time-limit check period (up to ~30 s); the job requeues itself
    from the trap and the second run completes."""
    log = slurm / "timelimit.events"
    script = _requeue_script(
        slurm / "timelimit.sh",
        log,
        "#SBATCH --time=1 --signal=B:USR1@55 --requeue --open-mode=append\n"
        f"#SBATCH -o {slurm}/timelimit.log\n",
    )
    t0 = time.monotonic()
    # sbatch --wait keeps waiting across the requeue until the job is finished.
    proc = run(["sbatch", "--parsable", "--wait", script], timeout=100)
    TIMINGS["--signal@limit requeue round trip"] = time.monotonic() - t0
    job_id = proc.stdout.strip().split(";")[0]
    info = job_info(job_id)
    assert info["JobState"] == "COMPLETED", info
    assert info["Restarts"] == "1", info
    lines = _check_two_runs(log)
    after = float(re.search(r"\bafter=(\S+)", lines[1]).group(1))
    TIMINGS["--signal=B:USR1@55 --time=1 delivered after"] = after
    assert 4 <= after <= 50, lines
    restart_gap = float(re.search(r"\bstart=(\S+)", lines[2]).group(1)) - float(
        re.search(r"\bat=(\S+)", lines[1]).group(1)
    )
    TIMINGS["requeue -> second run starts"] = restart_gap


def test_scancel_signal_batch_is_immediate_and_requeue_works(slurm: Path):
    """The fast path for simulating pre-emption: `scancel --signal=USR1 --batch`."""
    log = slurm / "fast.events"
    script = _requeue_script(
        slurm / "fast.sh",
        log,
        f"#SBATCH --requeue --open-mode=append -o {slurm}/fast.log\n",
    )
    job_id = submit(script)
    wait_for(job_id, {"RUNNING"}, timeout=30)
    deadline = time.monotonic() + 10  # wait until the trap is installed
    while not (log.exists() and log.read_text().startswith("run")):
        assert time.monotonic() < deadline, "job never started its script"
        time.sleep(0.1)
    t_sig = time.time()
    t0 = time.monotonic()
    run(["scancel", "--signal=USR1", "--batch", job_id])
    info = wait_for(job_id, {"COMPLETED"}, timeout=60)
    TIMINGS["scancel --signal USR1 -> requeued job completed"] = time.monotonic() - t0
    assert info["Restarts"] == "1", info
    lines = _check_two_runs(log)
    latency = float(re.search(r"\bat=(\S+)", lines[1]).group(1)) - t_sig
    TIMINGS["scancel --signal=USR1 --batch latency"] = latency
    assert latency < 5, lines


def test_scontrol_requeue_from_outside(slurm: Path):
    """`scontrol requeue JOBID` from outside: the batch shell gets SIGTERM at
    once, the job goes back to PENDING and reruns with SLURM_RESTART_COUNT=1."""
    log = slurm / "outside.events"
    script = slurm / "outside.sh"
    script.write_text(
        "#!/bin/bash\n"
        f"#SBATCH --requeue --open-mode=append -o {slurm}/outside.log\n"
        f"log={log}\n"
        'echo "run restart=${SLURM_RESTART_COUNT:-0}" >> $log\n'
        "trap 'echo \"term at=$(date +%s.%N)\" >> $log; exit 0' TERM\n"
        'if [ "${SLURM_RESTART_COUNT:-0}" -ge 1 ]; then echo done >> $log; exit 0; fi\n'
        "while true; do sleep 1 & wait $!; done\n"
    )
    job_id = submit(script)
    wait_for(job_id, {"RUNNING"}, timeout=30)
    deadline = time.monotonic() + 10
    while not (log.exists() and log.read_text().startswith("run")):
        assert time.monotonic() < deadline, "job never started its script"
        time.sleep(0.1)
    t_req = time.time()
    t0 = time.monotonic()
    run(["scontrol", "requeue", job_id])
    info = wait_for(job_id, {"COMPLETED"}, timeout=60)
    TIMINGS["scontrol requeue -> job completed"] = time.monotonic() - t0
    assert info["Restarts"] == "1", info
    lines = log.read_text().splitlines()
    assert [ln.split()[0] for ln in lines] == ["run", "term", "run", "done"], lines
    assert lines[2] == "run restart=1", lines
    term_latency = float(lines[1].split("at=")[1]) - t_req
    TIMINGS["scontrol requeue -> SIGTERM latency"] = term_latency
    assert term_latency < 5, lines


def test_srun_two_tasks(slurm: Path):
    t0 = time.monotonic()
    proc = run(["srun", "-n", "2", "bash", "-c", "echo $SLURM_PROCID"], timeout=60)
    TIMINGS["srun -n 2"] = time.monotonic() - t0
    assert sorted(proc.stdout.split()) == ["0", "1"], proc.stdout


def _need_mpi4py():
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        pytest.fail(f"mpi4py missing: {sys.executable} -m pip install mpi4py", pytrace=False)


# One os.write per rank: print() may issue two writes, and the launcher can
# interleave the ranks' output between them.
MPI_SNIPPET = (
    "import os; from mpi4py import MPI; c = MPI.COMM_WORLD; "
    "os.write(1, f'rank={c.Get_rank()} size={c.Get_size()} sum={c.allreduce(c.Get_rank())}\\n'.encode())"
)


def _ranks(out: str) -> list[tuple[str, str, str]]:
    return sorted(re.findall(r"rank=(\d+) size=(\d+) sum=(\d+)", out))


def test_mpirun_plain_two_ranks():
    """Plain Open MPI (no Slurm), as root: needs --allow-run-as-root."""
    _need_mpi4py()
    t0 = time.monotonic()
    proc = run(
        ["mpirun", "-np", "2", "--allow-run-as-root", "--oversubscribe",
         sys.executable, "-c", MPI_SNIPPET],
        timeout=60,
    )
    TIMINGS["mpirun -np 2"] = time.monotonic() - t0
    assert _ranks(proc.stdout) == [("0", "2", "1"), ("1", "2", "1")], proc.stdout


def test_srun_mpi_pmix_two_ranks(slurm: Path):
    """Open MPI ranks launched directly by srun through PMIx (no mpirun)."""
    _need_mpi4py()
    proc = run(["srun", "--mpi=pmix", "-n", "2", sys.executable, "-c", MPI_SNIPPET], timeout=60)
    assert _ranks(proc.stdout) == [("0", "2", "1"), ("1", "2", "1")], proc.stdout
