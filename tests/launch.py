"""Run the real entry point in real processes, under any of the launchers a user may use."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from trainer.runtime.distributed import free_port

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures" / "superglue"  # official-layout SuperGLUE samples
MAIN = str(REPO / "trainer" / "main.py")

# A random 2-layer d=32 T5 on the shipped RTE data and a handful of steps (the SuperGLUE smoke run, shrunk):
# distributed behaviour, not learning, is under test.
TINY = ["model.name_or_path=tiny", "data.task=rte",
        "model.tiny.d_model=32", "model.tiny.d_ff=64", "model.tiny.d_kv=8", "model.tiny.num_heads=4",
        "model.tiny.num_layers=2", "train.max_steps=4", "train.log_every=1", "train.eval_every=0",
        "train.micro_batch_size=4", "data.max_eval_examples=16", "eval.batch_size=8",
        "monitor.plots=false"]  # pictures cost a second per run: tests/test_end_to_end.py draws them


LAUNCHERS = ("python", "torchrun", "deepspeed", "deepspeed-hostfile", "deepspeed-no-ssh", "mpirun", "accelerate",
             "python-module", "torchrun-module", "deepspeed-module")


def command(nproc: int, launcher: str) -> list[str]:
    """The command line of one of LAUNCHERS starting `nproc` ranks on this machine."""
    if launcher == "python":
        assert nproc == 1
        return [sys.executable, MAIN]
    if launcher == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
                "--master_port", str(free_port()), MAIN]
    if launcher == "deepspeed":
        return ["deepspeed", "--num_gpus", str(nproc), "--master_port", str(free_port()), MAIN]
    # The module forms: the package on the path, not a file, is what runs (trainer/__main__.py or main.py's
    # __main__ block under -m).
    if launcher == "python-module":
        assert nproc == 1
        return [sys.executable, "-m", "trainer"]
    if launcher == "torchrun-module":
        return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
                "--master_port", str(free_port()), "-m", "trainer.main"]
    if launcher == "deepspeed-module":
        return ["deepspeed", "--num_gpus", str(nproc), "--master_port", str(free_port()), "--module", "trainer"]
    if launcher in ("deepspeed-hostfile", "deepspeed-no-ssh"):
        # The multi-node runner checks that it can ssh to the first host even when the hostfile lists only
        # localhost; --no_ssh_check with --master_addr skips that and launches locally. --no_ssh is the
        # one-launcher-per-node mode (the same command on every node with its --node_rank), no ssh at all.
        hostfile = Path(tempfile.mkdtemp(prefix="hostfile-")) / "hostfile"
        hostfile.write_text(f"localhost slots={nproc}\n")
        mode = ["--no_ssh_check"] if launcher == "deepspeed-hostfile" else ["--no_ssh", "--node_rank", "0"]
        return ["deepspeed", "--hostfile", str(hostfile), *mode, "--master_addr", "127.0.0.1",
                "--master_port", str(free_port()), MAIN]
    if launcher == "mpirun":
        # No RANK/WORLD_SIZE in the environment: DeepSpeed discovers them through mpi4py. Its discovery
        # would pick port 29500 unless MASTER_PORT is passed (trainer/runtime/distributed.py forwards it).
        return ["mpirun", "-np", str(nproc), "--allow-run-as-root", "--oversubscribe", "-x", "OMP_NUM_THREADS",
                "-x", f"MASTER_PORT={free_port()}", sys.executable, MAIN]
    if launcher == "accelerate":
        # --multi_gpu is accelerate's torchrun path and works without GPUs; `--cpu --num_processes 2`
        # silently starts ONE process (multi-CPU needs --mpirun_hostfile).
        return ["accelerate", "launch", "--multi_gpu", "--num_processes", str(nproc), "--num_machines", "1",
                "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
                MAIN]
    raise ValueError(launcher)


def injected(cmd: list[str], fault: str | None) -> list[str]:
    """`cmd` (a python or torchrun command ending in trainer/main.py) starting the trainer through
    tests/probes/inject.py with `fault` instead; unchanged when `fault` is None."""
    if fault is None:
        return cmd
    assert cmd[-1] == MAIN, cmd
    return cmd[:-1] + ["-m", "tests.probes.inject", fault]


def run_trainer(output_dir, *overrides: str, nproc: int = 1, launcher: str | None = None, timeout: int = 300,
                check: bool = True, env: dict | None = None, inject: str | None = None) -> subprocess.CompletedProcess:
    """Run trainer/main.py with the TINY overrides, then `overrides`, writing to `output_dir`; `inject`: a fault
    of tests/probes/inject.py to start it with."""
    launcher = launcher or ("python" if nproc == 1 else "torchrun")
    cmd = injected(command(nproc, launcher), inject) + TINY + [f"output_dir={output_dir}", *overrides]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    proc = subprocess.run(cmd, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def events(output_dir, kind: str | None = None) -> list[dict]:
    lines = (Path(output_dir) / "metrics.jsonl").read_text().splitlines()
    found = [json.loads(line) for line in lines]
    return [e for e in found if kind is None or e.get("event") == kind]


def start_trainer(output_dir, *overrides: str, nproc: int = 1, env: dict | None = None,
                  inject: str | None = None) -> subprocess.Popen:
    """Like run_trainer, but returns at once with the running process (to signal or kill it)."""
    launcher = "python" if nproc == 1 else "torchrun"
    cmd = injected(command(nproc, launcher), inject) + TINY + [f"output_dir={output_dir}", *overrides]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.Popen(cmd, cwd=REPO, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def worker_pids(launcher_pid: int) -> dict[int, int]:
    """{rank: pid} of the trainer processes a torchrun started (read from /proc: their RANK variable)."""
    found = {}
    for child in Path(f"/proc/{launcher_pid}/task/{launcher_pid}/children").read_text().split():
        environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        ranks = [e.split(b"=", 1)[1] for e in environ if e.startswith(b"RANK=")]
        if ranks:
            found[int(ranks[0])] = int(child)
    return found


def wait_for_step(output_dir, step: int, proc: subprocess.Popen, timeout: float = 240) -> None:
    """Block until rank 0 has logged train step `step` (the loop and its signal handlers are running)."""
    import time

    deadline = time.time() + timeout
    while time.time() < deadline:
        path = Path(output_dir) / "metrics.jsonl"
        if path.exists() and any(e.get("event") == "train" and e["step"] >= step for e in events(output_dir)):
            return
        if proc.poll() is not None:
            raise AssertionError(f"trainer exited {proc.returncode} early:\n{proc.stderr.read()[-3000:]}")
        time.sleep(0.05)
    raise AssertionError(f"no train step {step} within {timeout} s")


def trainer_traceback(output: str) -> bool:
    """A Python traceback through this checkout's trainer (torchrun prints one of its own for any exit code
    other than 0: that one goes through torch/distributed/run.py only)."""
    return bool(re.search(r'File "[^"]*/trainer/[^"]*", line \d+', output))
