"""The watchdog's decisions and report, in-process (no thread started, no process ended), and the step clock.
The real thing, with ranks stopped by SIGSTOP or stuck in Python: tests/runtime/test_preemption.py,
tests/runtime/test_faults.py and tests/test_multinode.py."""
import os
import threading
import time

import pytest
import torch

from trainer.runtime import distributed
from trainer.runtime.distributed import CollectiveNote
from trainer.runtime.steptime import StepClock
from trainer.runtime.watchdog import Watchdog, innermost_frame, report_path, resolve_timeout


@pytest.fixture
def note(monkeypatch):
    """Set the last-collective note as distributed.py would."""
    def set_note(op, seconds_ago, returned):
        monkeypatch.setattr(distributed, "_last", CollectiveNote(op, time.time() - seconds_ago, returned))
    monkeypatch.setattr(distributed, "_last", None)
    return set_note


def watchdog(tmp_path, rank=0, world=2, timeout=10.0) -> Watchdog:
    dog = Watchdog(tmp_path, rank, tuple(f"node{r + 1}" for r in range(world)), tuple(100 + r for r in range(world)),
                   timeout, grace_s=0.0)
    dog._started = time.time() - 1
    return dog


def test_a_step_overdue_is_a_hang_unless_paused(tmp_path, note):
    dog = watchdog(tmp_path)
    assert dog._hung() is None
    dog._beat -= 11
    assert dog._hung() == "no training step finished for 11 s"
    with dog.paused():  # evaluation: no steps expected
        assert dog._hung() is None
    assert dog._hung() is None  # the pause ends with a fresh beat


def test_a_collective_waited_in_too_long_is_a_hang_even_when_paused(tmp_path, note):
    dog = watchdog(tmp_path)
    note("all_reduce_grads", 12, returned=False)
    with dog.paused():
        assert dog._hung() == "rank 0 waited 12 s in all_reduce_grads"
    note("all_reduce_grads", 12, returned=True)  # entered long ago but left: not waiting
    assert dog._hung() is None


def test_whereabouts_name_the_collective_the_step_and_the_frame(tmp_path, note):
    dog = watchdog(tmp_path, rank=1)
    dog.beat(12)
    note("all_reduce_sum", 3.0, returned=False)
    line = dog.whereabouts()
    assert line.startswith(f"rank 1 (node2, pid {os.getpid()}): waiting in all_reduce_sum for 3.")
    assert ", during step 13, at " in line  # the step after the last one finished
    note("all_reduce_sum", 3.0, returned=True)
    assert "in no collective (the last, all_reduce_sum, was entered 3." in dog.whereabouts()


def test_innermost_frame_is_the_checkouts_own_code(tmp_path):
    """A thread sleeping inside a function of this file: its innermost frame here, not in the time module."""
    ready, done = threading.Event(), threading.Event()

    def sleeper():
        ready.set()
        done.wait()

    thread = threading.Thread(target=sleeper)
    thread.start()
    ready.wait()
    try:
        assert innermost_frame(thread).startswith("tests/runtime/test_watchdog.py:")
        assert innermost_frame(thread).endswith("in sleeper")
    finally:
        done.set()
        thread.join()


def test_summary_has_a_line_per_rank_and_names_the_silent_ones(tmp_path):
    dog = watchdog(tmp_path, world=3)
    for rank, where in ((0, "rank 0 (node1, pid 100): waiting in all_reduce_grads"), (2, "rank 2 (node3): ...")):
        report_path(tmp_path, rank).parent.mkdir(exist_ok=True)
        report_path(tmp_path, rank).write_text(where + "\n\nStack ...\n")
    reports = dog.read_reports()
    assert reports == {0: "rank 0 (node1, pid 100): waiting in all_reduce_grads", 2: "rank 2 (node3): ..."}
    lines = dog.summary("rank 0 waited 10 s in all_reduce_grads", reports).splitlines()
    assert lines[0].startswith("error: the run hung (rank 0 waited 10 s in all_reduce_grads; hang_timeout_s=10)")
    assert "exit code 7" in lines[0] and str(tmp_path / "hang") in lines[0]
    assert lines[1:] == ["  rank 0 (node1, pid 100): waiting in all_reduce_grads",
                         "  rank 1 (node2, pid 101): no report: stopped, dead or stuck outside Python (on its node: "
                         "py-spy dump --pid 101)",
                         "  rank 2 (node3): ..."]


def test_reports_of_an_earlier_run_are_not_read(tmp_path):
    dog = watchdog(tmp_path)
    path = report_path(tmp_path, 1)
    path.parent.mkdir()
    path.write_text("rank 1 (node2): an old hang\n")
    os.utime(path, (dog._started - 60, dog._started - 60))
    assert dog.read_reports() == {}


def test_default_timeout_and_grace_leave_room_before_the_collective_timeout():
    assert resolve_timeout(0, 1800) == (1440, 10)
    assert resolve_timeout(0, 15) == (12, 1.5)
    assert resolve_timeout(5, 60) == (5, 10)


def test_step_clock_leaves_out_the_waits_in_collectives():
    clock = StepClock(torch.device("cpu"))
    with clock.waiting():  # outside a step: not counted
        time.sleep(0.05)
    started = time.perf_counter()
    for _ in range(2):
        clock.begin()
        time.sleep(0.05)  # the rank's own work
        with clock.waiting():  # waiting for the other ranks
            time.sleep(0.2)
        clock.end()
    wall = (time.perf_counter() - started) / 2
    busy = clock.take()
    # Bounds that hold however loaded the machine: sleeps last at least what they ask for.
    assert 0.05 <= busy <= wall - 0.2, (busy, wall)
    assert clock.take() is None  # taken: the next log window starts empty
