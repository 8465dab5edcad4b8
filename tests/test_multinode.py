"""Two nodes on one machine: the shipped templates, per-node launchers and faults across a real network.

`tools/cluster/local_slurm.sh start --nodes 2` makes node1 and node2, each a network namespace with its own address,
hostname and /etc/hosts, joined by a bridge; slurmctld schedules across both (see slurm/README.md, "Two nodes
on one machine"). The module fixture always runs `tools/cluster/local_slurm.sh stop` and then checks that nothing of
the cluster is left. What crosses nodes here and nowhere else in the suite: MASTER_ADDR taken from the first
node of the allocation and reached over the bridge, Slurm's node-local ranks (2 tasks per node), one
launcher per node, a signal that reaches only the first node's batch shell, a node that dies while the
other lives, a rank stopped on the second node and reported by the others, and output written from two hosts
into one directory.

Every training run is 4 ranks (2 per node) of the tiny preset with the same explicit overrides and a global batch of
16, compared with one reference: a single process with 4 micro batches of accumulation.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.launch import MAIN, REPO, TINY, events
from tests.tools.test_local_slurm import SCRIPT, TIMINGS, job_info, local_cluster, run
from tests.runtime.test_resume import losses, max_param_diff
from tests.test_slurm_templates import FINAL, wait_final
from trainer.runtime.distributed import free_port
from trainer.runtime.guard import EXIT_HANG

pytestmark = pytest.mark.cluster

PRESET = "configs/tiny.yaml"
STEPS = 24   # enough that a signal or a kill after step 2 or 6 lands mid-run on a fast machine too
# Explicit, so that the embedded default run may change freely; the sweep sets task, prompts and seed
# itself, to the same values. collective_timeout_s bounds a hang in a collective (the node-kill test).
COMMON = [*TINY, "model.dropout=0", "train.global_batch_size=16", f"train.max_steps={STEPS}",
          "checkpoint.every=4", "data.task=rte", "prompt.num_prompts=4", "seed=42", "collective_timeout_s=60"]
HOSTS = ["node1", "node1", "node2", "node2"]   # rank order: Slurm and the launchers fill node1 first
TOL = 1e-5   # 4 ranks vs 1 with accumulation: only the float summation order differs (tests/runtime/test_resume.py)
# The final prompts drift further: 24 AdamW steps at lr 0.3 amplify summation-order differences in near-zero
# gradient components (measured max |dparam| 2.6e-5 on prompts of magnitude up to 5.3, router 9e-8).
PARAM_TOL = 1e-4
TWO_NODES = ["--nodes=2", "--ntasks-per-node=2", "--gpus-per-node=0", "--cpus-per-task=1", "--time=30"]
OURS = "lslurm"   # the prefix of every namespace, link and /etc/netns entry the tool makes


def leftovers() -> list[str]:
    """What of a multi-node cluster exists on this machine now (empty once `stop` did its job)."""
    found = [f"netns {n}" for n in run(["ip", "netns", "list"]).stdout.split() if n.startswith(OURS)]
    found += [f"link {ln.split(':')[1].strip()}" for ln in run(["ip", "-o", "link"]).stdout.splitlines()
              if ln.split(":")[1].strip().startswith(OURS)]
    found += [f"file {p}" for p in Path("/etc/netns").glob(f"{OURS}*")]
    found += [f"file {p}" for p in (Path("/etc/slurm/slurm.conf"), Path("/tmp/local-slurm")) if p.exists()]
    found += [f"process {p}" for p in _tagged_processes()]
    return found


def _tagged_processes() -> list[str]:
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            env = (proc / "environ").read_bytes()
        except OSError:
            continue
        if b"LOCAL_SLURM_TAG=" in env or b"SLURM_CLUSTER_NAME=localslurm" in env:
            pids.append(proc.name)
    return pids


def test_stop_undoes_a_start_that_failed_half_way():
    """Runs before the module's cluster exists: a start that gives up after the namespaces and daemons are
    up (LOCAL_SLURM_WAIT=0: no time for the nodes to register) fails, and stop removes all of it."""
    assert not leftovers(), ("a local cluster is already running here (an interrupted test run leaves one); "
                             f"stop it with `bash tools/cluster/local_slurm.sh stop`: {leftovers()}")
    try:
        failed = run([SCRIPT, "start", "--nodes", "2"], check=False, env={**os.environ, "LOCAL_SLURM_WAIT": "0"})
        assert failed.returncode != 0 and "0 of 2 node(s) idle" in failed.stderr, failed.stderr
        assert any(x.startswith("netns") for x in leftovers()), leftovers()   # it did get half-way
    finally:
        run([SCRIPT, "stop"])
    assert not leftovers(), leftovers()


@pytest.fixture(scope="module")
def nodes(request, tmp_path_factory):
    yield from local_cluster(request, tmp_path_factory, nodes=2)
    assert not leftovers(), f"stop left these behind: {leftovers()}"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The same run on one process: micro batch 4 x accumulation 4 = the global batch of 16."""
    out = tmp_path_factory.mktemp("reference")
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, MAIN, "--config", PRESET, *COMMON, f"output_dir={out}"], cwd=REPO,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    TIMINGS["1-process reference"] = time.monotonic() - t0
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "batch 4 x accum 4 x world 1 = 16" in proc.stdout
    return out


def same_run(out: Path, ref: Path) -> None:
    """4 ranks on 2 nodes trained what the single process trained: each step's loss, the final parameters."""
    info = json.loads((out / "run_info.json").read_text())
    assert info["world_size"] == 4 and info["hosts"] == HOSTS, info
    a, b = losses(ref), losses(out)
    assert [e["step"] for e in events(out, "train")] == list(range(1, STEPS + 1))   # each step logged once
    assert sorted(b) == sorted(a) == list(range(1, STEPS + 1))
    assert max(abs(a[s] - b[s]) for s in a) <= TOL, (a, b)
    assert max_param_diff(ref, out) <= PARAM_TOL
    assert a[1] != a[STEPS]


def sbatch(template: str, env: dict, *options: str) -> str:
    base = {**os.environ, "PYTHON": sys.executable, "PRESET": PRESET, "DS_CONFIG": "ds_configs/cpu_zero3.json",
            "OVERRIDES": " ".join(COMMON), "OMP_NUM_THREADS": "1"}
    proc = run(["sbatch", "--parsable", *TWO_NODES, *options, REPO / "slurm" / template], cwd=REPO,
               env={**base, **env})
    return proc.stdout.strip().split(";")[0]


def wait_for_step(out: Path, step: int, job_id: str, log: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not ((out / "metrics.jsonl").exists() and any(e["step"] >= step for e in events(out, "train"))):
        assert job_info(job_id).get("JobState") not in FINAL, log.read_text()[-4000:]
        assert time.monotonic() < deadline, f"no step {step} after {timeout} s\n{log.read_text()[-4000:]}"
        time.sleep(0.2)


# Stands in for python in the template (PYTHON=...): records what one rank was given, trains nothing.
RANK_STUB = """#!/bin/sh
for a in "$@"; do case $a in output_dir=*) out=${a#output_dir=} ;; esac; done
echo "$RANK $LOCAL_RANK $LOCAL_WORLD_SIZE $WORLD_SIZE $MASTER_ADDR $(hostname)" >> "$out/ranks"
"""


@pytest.mark.parametrize("layout, expected", [
    ([], ["0 0 2 4 node1 node1", "1 1 2 4 node1 node1", "2 0 2 4 node1 node2", "3 1 2 4 node1 node2"]),
    # 3 tasks on 2 nodes: 2 + 1 (Slurm: "2,1"), though --ntasks-per-node=2 still says 2 for node2.
    (["--ntasks=3"], ["0 0 2 3 node1 node1", "1 1 2 3 node1 node1", "2 0 1 3 node1 node2"]),
], ids=["2x2", "3-on-2"])
def test_template_rank_variables_across_nodes(nodes, tmp_path, layout, expected):
    """RANK, LOCAL_RANK, LOCAL_WORLD_SIZE (the tasks on this node), WORLD_SIZE and MASTER_ADDR (the first
    node) that slurm/launch.sh gives each rank, and the node each rank runs on."""
    stub = tmp_path / "python"
    stub.write_text(RANK_STUB)
    stub.chmod(0o755)
    log = tmp_path / "job.log"
    job_id = sbatch("smop_t5xl.sh", {"PYTHON": str(stub), "RUN_NAME": "ranks", "OUTPUT_ROOT": str(tmp_path)},
                    *layout, f"--output={log}")
    info = wait_final(job_id, log, timeout=60)
    assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0"), log.read_text()[-3000:]
    ranks = sorted((tmp_path / f"ranks-{job_id}" / "ranks").read_text().splitlines(), key=lambda x: int(x.split()[0]))
    assert ranks == expected


def test_template_across_two_nodes_preempted_requeued_resumed(nodes, reference):
    """`sbatch --nodes=2 --ntasks-per-node=2 slurm/smop_t5xl.sh` trains 4 ranks on 2 nodes. Mid-run the batch
    shell (on node1 only) gets USR1, as `--signal=B:USR1@600` sends it: all 4 ranks stop after the same
    step, the job requeues itself and resumes. The whole run equals the single-process one."""
    t0 = time.monotonic()
    log = nodes / "t5xl.log"
    job_id = sbatch("smop_t5xl.sh", {"RUN_NAME": "t5xl", "OUTPUT_ROOT": str(nodes)}, f"--output={log}")
    out = nodes / f"t5xl-{job_id}"
    wait_for_step(out, 2, job_id, log)
    run(["scancel", "--signal=USR1", "--batch", job_id])
    info = wait_final(job_id, log, timeout=400)
    TIMINGS["2 nodes: smop_t5xl.sh pre-empted, requeued -> COMPLETED"] = time.monotonic() - t0
    text = log.read_text()
    assert (info["JobState"], info["ExitCode"], info["Restarts"]) == ("COMPLETED", "0:0", "1"), text[-4000:]
    assert "4 ranks on 2 node(s) (node[1-2]), master node1:" in text, text[-4000:]
    stops = dict(re.findall(r"rank (\d): stopped after step (\d+) by", text))
    assert sorted(stops) == ["0", "1", "2", "3"] and len(set(stops.values())) == 1, text[-4000:]
    assert 2 <= int(stops["0"]) < STEPS
    assert [e["step"] for e in events(out, "resume")] == [int(stops["0"])]
    same_run(out, reference)


def launcher(kind: str, node_rank: int, port: int, hostfile: Path) -> list[str]:
    """One launcher of node `node_rank`, for 2 local ranks, rendezvous at node1:port."""
    if kind == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(node_rank),
                "--nproc_per_node", "2", "--master_addr", "node1", "--master_port", str(port)]
    return [shutil.which("deepspeed") or "deepspeed", "--hostfile", str(hostfile), "--no_ssh", "--node_rank",
            str(node_rank), "--master_addr", "node1", "--master_port", str(port)]


@pytest.mark.parametrize("kind", ["torchrun", "deepspeed"])
def test_one_launcher_per_node(nodes, reference, tmp_path, kind):
    """`torchrun --nnodes 2` and `deepspeed --no_ssh --node_rank N`, one per node, each started on its node
    (`tools/cluster/local_slurm.sh exec nodeN ...`), rendezvous on node1 over the bridge."""
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node1 slots=2\nnode2 slots=2\n")
    out, port, t0 = tmp_path / "run", free_port(), time.monotonic()
    procs = [subprocess.Popen([SCRIPT, "exec", f"node{i + 1}", *launcher(kind, i, port, hostfile), MAIN,
                               "--config", PRESET, *COMMON, f"output_dir={out}"],
                              cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    try:
        logs = [p.communicate(timeout=300)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    TIMINGS[f"2 nodes: {kind} x 2"] = time.monotonic() - t0
    assert [p.returncode for p in procs] == [0, 0], "\n".join(log[-3000:] for log in logs)
    assert "world 4 | batch 4 x accum 1 x world 4 = 16" in logs[0]
    same_run(out, reference)


def test_sweep_job_across_two_nodes_survives_a_killed_node(nodes, reference):
    """slurm/sweep_array.sh, a one-point grid on 2 nodes x 2 ranks. After a checkpoint every process of node2
    (slurmd, slurmstepd, its 2 ranks) is SIGKILLed: the job ends in a failed state well within the collective
    timeout, and the same sbatch command with the same OUTPUT_DIR, once node2 is back, resumes from the last
    checkpoint to the uninterrupted single-process result.
    --no-requeue: Slurm would otherwise requeue a job whose node failed, and it would wait for the node."""
    t0 = time.monotonic()
    env = {"TASKS": "rte", "NUM_PROMPTS": "4", "SEEDS": "42", "RUN_NAME": "sweep", "OUTPUT_ROOT": str(nodes)}
    first = nodes / "sweep-1.log"
    job_id = sbatch("sweep_array.sh", env, "--array=0-0", "--no-requeue", f"--output={first}")
    out = nodes / f"sweep-{job_id}" / "rte-k4-seed42"
    wait_for_step(out, 6, job_id, first)   # checkpoint.every=4: step-000004 is saved
    t_kill = time.monotonic()
    run([SCRIPT, "kill-node", "node2"])
    info = wait_final(job_id, first, timeout=120)
    ended_after = time.monotonic() - t_kill
    TIMINGS["2 nodes: node2 killed -> job ended"] = ended_after
    assert info["JobState"] in ("NODE_FAIL", "FAILED") and info["ExitCode"] != "0:0", info
    assert ended_after < 60, f"the job took {ended_after:.0f} s to end, the collective timeout is 60 s"
    killed_at = max(e["step"] for e in events(out, "train"))
    assert killed_at < STEPS

    run([SCRIPT, "start", "--nodes", "2"])   # restarts node2's slurmd
    second = nodes / "sweep-2.log"
    job2 = sbatch("sweep_array.sh", {**env, "OUTPUT_DIR": str(out)}, "--array=0-0", "--no-requeue",
                  f"--output={second}")
    info = wait_final(job2, second, timeout=400)
    TIMINGS["2 nodes: sweep killed, node restarted, resubmitted -> COMPLETED"] = time.monotonic() - t0
    assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0"), second.read_text()[-4000:]
    resumed = [e["step"] for e in events(out, "resume")]
    assert len(resumed) == 1 and resumed[0] % 4 == 0 and 4 <= resumed[0] <= killed_at, resumed
    same_run(out, reference)


def rank_pid(job_id: str, rank: int) -> int:
    """The trainer process of `rank` in Slurm job `job_id` (read from /proc: the nodes share this machine's
    process table; each rank's environment has its RANK and the job's id)."""
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            env = set((proc / "environ").read_bytes().split(b"\0"))
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if b"trainer/main.py" in cmdline and {f"RANK={rank}".encode(), f"SLURM_JOB_ID={job_id}".encode()} <= env:
            return int(proc.name)
    raise AssertionError(f"no trainer process of rank {rank} in job {job_id}")


def test_a_rank_stopped_on_the_second_node_is_reported_by_the_others(nodes):
    """`sbatch --nodes=2 slurm/smop_t5xl.sh` with rank 3 (node2) stopped by SIGSTOP mid-run: after hang_timeout_s
    the three live ranks write their stacks to output_dir/hang/, rank 0 prints where each of the four is (rank 3:
    no report), exits 7 and srun ends the job, long before the 60 s collective timeout."""
    log = nodes / "hang.log"
    job_id = sbatch("smop_t5xl.sh", {"RUN_NAME": "hang", "OUTPUT_ROOT": str(nodes),
                                     "OVERRIDES": " ".join(COMMON + ["train.max_steps=100000", "hang_timeout_s=8"])},
                    f"--output={log}")
    out = nodes / f"hang-{job_id}"
    wait_for_step(out, 2, job_id, log)
    os.kill(rank_pid(job_id, 3), signal.SIGSTOP)
    t_stop = time.monotonic()
    info = wait_final(job_id, log, timeout=120)
    ended_after = time.monotonic() - t_stop
    TIMINGS["2 nodes: rank 3 stopped -> reported, job ended"] = ended_after
    text = log.read_text()
    # srun ends the step when rank 0 exits 7 and kills the stopped rank: the job's code is that kill's (137).
    assert info["JobState"] == "FAILED" and info["ExitCode"] != "0:0", f"{info}\n{text[-4000:]}"
    assert f"task 0: Exited with exit code {EXIT_HANG}" in text, text[-4000:]
    lines = text.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("error: the run hung"))
    assert "hang_timeout_s=8" in lines[first], lines[first]
    ranks = lines[first + 1:first + 5]
    for rank, host in enumerate(HOSTS[:3]):
        assert ranks[rank].startswith(f"  rank {rank} ({host}, pid ") and " at " in ranks[rank], ranks
    assert ranks[3].startswith("  rank 3 (node2, pid ") and "no report: stopped" in ranks[3], ranks
    assert {f"rank-{r}.txt" for r in range(3)} <= {p.name for p in (out / "hang").iterdir()}
    assert "Stack of every thread" in (out / "hang" / "rank-2.txt").read_text()
    assert ended_after < 60, f"the job took {ended_after:.0f} s to end; the collective timeout is 60 s"
