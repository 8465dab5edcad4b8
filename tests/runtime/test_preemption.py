"""Pre-emption and failures with real processes: signals, a killed or hung rank, non-finite losses."""
import json
import os
import re
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.launch import events, run_trainer, start_trainer, wait_for_step, worker_pids
from trainer.runtime.checkpoint import verify
from trainer.runtime.guard import EXIT_COLLAPSE, EXIT_HANG, EXIT_NONFINITE, EXIT_REQUEUE

pytestmark = pytest.mark.multiprocess

LONG = ["train.max_steps=20", "checkpoint.every=5"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted 2-rank run (dropout on: the per-rank RNG is part of what resume restores)."""
    out = tmp_path_factory.mktemp("ref")
    run_trainer(out, *LONG, nproc=2)
    return out


def stopped_steps(stderr: str) -> dict[int, int]:
    return {int(r): int(s) for r, s in re.findall(r"rank (\d): stopped after step (\d+) by", stderr)}


@pytest.mark.parametrize("who, sig", [("one", signal.SIGUSR1), ("all", signal.SIGTERM)])
def test_signal_stops_every_rank_at_one_step_then_resume_matches(tmp_path, reference, who, sig):
    out = tmp_path / "run"
    proc = start_trainer(out, *LONG, nproc=2)
    wait_for_step(out, 2, proc)
    pids = worker_pids(proc.pid)
    for rank in ([1] if who == "one" else [0, 1]):
        os.kill(pids[rank], sig)
    _, stderr = proc.communicate(timeout=240)
    steps = stopped_steps(stderr)
    assert set(steps) == {0, 1} and len(set(steps.values())) == 1, stderr[-3000:]  # same step on both ranks
    step = steps[0]
    assert f"exitcode  : {EXIT_REQUEUE}" in stderr and step < 20
    latest = (out / "checkpoints" / "latest").read_text().strip()
    meta = verify(out / "checkpoints" / latest)
    assert meta["step"] == step and meta["reason"] == "signal"
    run_trainer(out, *LONG, nproc=2)  # the same command resumes
    ref = {e["step"]: e["loss"] for e in events(reference, "train")}
    got = {e["step"]: e["loss"] for e in events(out, "train")}
    assert sorted(got) == list(range(1, 21))
    delta = max(abs(ref[s] - got[s]) for s in ref)
    print(f"\nsignal {sig.name} to {who} rank(s) at step {step}, resumed: max |dloss| = {delta:.3g}")
    assert delta <= 1e-6


def test_single_process_exit_code_is_requeue(tmp_path):
    out = tmp_path / "run"
    proc = start_trainer(out, "train.max_steps=200", "checkpoint.every=0")
    wait_for_step(out, 2, proc)
    proc.send_signal(signal.SIGUSR1)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_REQUEUE, stderr[-2000:]
    assert "stopped after step" in stderr and "by signal SIGUSR1" in stderr
    assert [p.name for p in (out / "checkpoints").glob("step-*")] == [f"step-{stopped_steps(stderr)[0]:06d}"]


def signal_rank_1(out, sig: signal.Signals, collective_timeout_s: int) -> tuple:
    """Start a long 2-rank job and send `sig` to rank 1 once step 2 is logged: (launcher, when it was sent)."""
    proc = start_trainer(out, "train.max_steps=100000", f"collective_timeout_s={collective_timeout_s}", nproc=2)
    try:
        wait_for_step(out, 2, proc)
        os.kill(worker_pids(proc.pid)[1], sig)
    except BaseException:
        proc.kill()
        raise
    return proc, time.time()


def job_end(proc, signalled: float) -> tuple[int, float, str]:
    """(exit code, seconds from the signal to the launcher's exit, stderr)."""
    try:
        _, stderr = proc.communicate(timeout=150)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, time.time() - signalled, stderr


@pytest.fixture(scope="module")
def dead_and_hung(tmp_path_factory) -> dict:
    """{signal: (job_end, output_dir)} for rank 1 killed (SIGKILL) and hung (SIGSTOP). The hung job mostly waits
    (the watchdog's hang_timeout_s, then torchrun's 30 s grace before it SIGKILLs the stopped worker), so the
    killed job runs during that wait rather than after it."""
    hung_out, dead_out = tmp_path_factory.mktemp("hung"), tmp_path_factory.mktemp("dead")
    with ThreadPoolExecutor(1) as waiter:
        hung = waiter.submit(job_end, *signal_rank_1(hung_out, signal.SIGSTOP, 15))
        dead = job_end(*signal_rank_1(dead_out, signal.SIGKILL, 60))
        return {signal.SIGKILL: (dead, dead_out), signal.SIGSTOP: (hung.result(), hung_out)}


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSTOP], ids=["killed", "hung"])
def test_dead_or_hung_rank_ends_the_job(dead_and_hung, sig):
    """kill -9: torchrun sees the death and the survivor's collective fails at once. SIGSTOP (a hung rank):
    the survivor's watchdog ends it after hang_timeout_s (0.8 x collective_timeout_s), then torchrun tears the
    rest down."""
    (returncode, elapsed, _), _ = dead_and_hung[sig]
    print(f"\n{sig.name} to rank 1: job ended with exit {returncode} after {elapsed:.1f} s")
    assert returncode != 0 and elapsed <= 120


def test_hung_rank_is_reported_before_the_collective_timeout(dead_and_hung):
    """Rank 1 stopped by SIGSTOP cannot report; rank 0, waiting for it in a collective, writes its stack and last
    collective to output_dir/hang/rank-0.txt at 12 s (of a 15 s collective timeout), prints one line per rank
    and exits 7: no traceback from the collective's timeout."""
    (_, _, stderr), out = dead_and_hung[signal.SIGSTOP]
    assert f"exitcode  : {EXIT_HANG}" in stderr, stderr[-3000:]
    lines = re.split(r"[\r\n]", stderr)
    first = next(i for i, line in enumerate(lines) if line.startswith("error: the run hung"))
    assert "hang_timeout_s=12" in lines[first] and f"exit code {EXIT_HANG}" in lines[first], lines[first]
    rank0, rank1 = lines[first + 1:first + 3]
    assert re.match(r"  rank 0 \(.+, pid \d+\): waiting in (all_reduce_sum|all_reduce_grads) for 1\d\.\d s, "
                    r"during step \d+, at trainer/runtime/distributed.py:\d+ in (all_reduce_sum|all_reduce_grads)$",
                    rank0), rank0
    assert re.match(r"  rank 1 \(.+, pid \d+\): no report: stopped, dead or stuck outside Python", rank1), rank1
    report = (out / "hang" / "rank-0.txt").read_text()
    assert report.splitlines()[0] == rank0.strip() and "Stack of every thread" in report
    assert 'trainer/loop.py", line' in report and "in train_step" in report  # the main thread's stack
    assert sorted(p.name for p in (out / "hang").iterdir()) == ["rank-0.txt"]
    assert "Timed out" not in stderr and 'trainer/main.py", line' not in stderr  # ended before the timeout


def test_nonfinite_steps_skipped_then_stop_with_last_good_checkpoint_intact(tmp_path):
    """lr 1e30: step 2's update overflows the prompts, so steps 3, 4, 5 are non-finite and skipped."""
    out = tmp_path / "run"
    proc = run_trainer(out, "train.lr=1e30", "train.warmup_ratio=0", "train.max_grad_norm=0", "train.max_steps=8",
                       "checkpoint.every=1", "train.max_nonfinite=3", check=False)
    assert proc.returncode == EXIT_NONFINITE, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "step 5: loss or gradient not finite for 3 steps in a row" in errors[0]
    assert [e["step"] for e in events(out, "nonfinite")] == [3, 4]  # the 3rd in a row stops the run instead
    train = {e["step"]: e["loss"] for e in events(out, "train")}
    assert all(train[s] < 100 for s in (1, 2)) and all(train[s] != train[s] for s in (3, 4))  # NaN: no tokens
    root = out / "checkpoints"
    assert (root / "latest").read_text() == "step-000002\n"
    assert sorted(p.name for p in root.glob("step-*")) == ["step-000001", "step-000002"]
    assert verify(root / "step-000002")["step"] == 2
    assert json.loads((root / "step-000002" / "meta.json").read_text())["nonfinite_skipped"] == 0


def test_nonfinite_read_late_gives_the_same_decisions(tmp_path):
    """The host reads the guard's flags one step late except at log and checkpoint steps: with neither at
    steps 3 and 5, the skips and the stop still land on the same steps, and no skipped step is saved."""
    out = tmp_path / "run"
    proc = run_trainer(out, "train.lr=1e30", "train.warmup_ratio=0", "train.max_grad_norm=0", "train.max_steps=12",
                       "checkpoint.every=2", "train.log_every=4", "train.max_nonfinite=3", check=False)
    assert proc.returncode == EXIT_NONFINITE, proc.stderr[-2000:]
    assert "step 5: loss or gradient not finite for 3 steps in a row" in proc.stderr
    assert [e["step"] for e in events(out, "nonfinite")] == [3, 4]
    assert [e["step"] for e in events(out, "train")] == [4]
    assert sorted(p.name for p in (out / "checkpoints").glob("step-*")) == ["step-000002"]


def test_routing_collapse_warns_once_and_stop_on_collapse_saves_and_exits_5(tmp_path):
    """The raw (paper's) router on the RTE smoke data sends every clean choice to one prompt within a few
    steps at lr 0.3; the detector warns once, and with monitor.stop_on_collapse the run stops saved."""
    common = ["prompt.router_input=raw", "train.max_steps=12", "train.warmup_ratio=0", "monitor.collapse_entropy=0.2",
              "monitor.collapse_patience=2", "train.micro_batch_size=8"]
    watch, stop = tmp_path / "watch", tmp_path / "stop"
    proc = run_trainer(watch, *common)
    collapses = events(watch, "routing_collapse")
    entropies = [e["routing_entropy"] for e in events(watch, "train")]
    assert len(collapses) == 1 and collapses[0]["routing_entropy"] < 0.2, entropies
    step = collapses[0]["step"]
    train = {e["step"]: e["routing_entropy"] for e in events(watch, "train")}
    assert train[step] < 0.2 and train[step - 1] < 0.2 and max(train) == 12  # the run went on to the end
    assert proc.stdout.count("routing collapsed") + proc.stderr.count("routing collapsed") == 1
    proc = run_trainer(stop, *common, "monitor.stop_on_collapse=true", check=False)
    assert proc.returncode == EXIT_COLLAPSE, proc.stderr[-2000:]
    assert "routing collapsed (monitor.stop_on_collapse)" in proc.stderr
    assert max(e["step"] for e in events(stop, "train")) == step
    meta = verify(stop / "checkpoints" / f"step-{step:06d}")
    assert meta["reason"] == "collapse" and (stop / "checkpoints" / "latest").read_text() == f"step-{step:06d}\n"
