"""Faults a long run meets, injected into 2 real ranks (tests/probes/inject.py): a slow rank, a rank stuck in its
own code. Each prints what it measured (the README's "When things go wrong" quotes it). A full disk:
tests/runtime/test_disk_full.py; a rank stopped by SIGSTOP: tests/runtime/test_preemption.py; across two nodes:
tests/test_multinode.py."""
import json
import re
import time

import pytest

from tests.launch import events, run_trainer, start_trainer, trainer_traceback
from trainer.runtime.guard import EXIT_HANG

pytestmark = pytest.mark.multiprocess

def test_a_slow_rank_is_named_once_with_its_host_and_drawn(tmp_path):
    """Rank 1 sleeps 0.4 s at the start of every step; rank 0 waits for it in the step's first collective, which
    its step time leaves out. Rank 0 names rank 1 and its host once, after 3 log events."""
    out = tmp_path / "run"
    proc = run_trainer(out, "train.max_steps=8", "monitor.plots=true", nproc=2, inject="slow-rank=1:0.4")
    host = json.loads((out / "run_info.json").read_text())["hosts"][1]
    train = events(out, "train")
    assert all(len(e["step_time_s"]) == 2 for e in train)
    assert all(e["step_time_s"][1] >= 0.4 for e in train)  # its own time includes its sleep
    assert all(e["step_time_s"][1] > 1.5 * e["step_time_s"][0] for e in train[2:]), [e["step_time_s"] for e in train]
    named = events(out, "straggler")
    # Once, for rank 1: after 3 slow log events in a row (step 3, or a little later when the first step's
    # warm-up evens the two ranks out), and never again while it stays slow.
    assert [(e["rank"], e["host"]) for e in named] == [(1, host)] and 3 <= named[0]["step"] <= 5, named
    warnings = [line for line in re.split(r"[\r\n]", proc.stdout) if "is a straggler" in line]
    assert len(warnings) == 1 and warnings[0].startswith(f"warning: step {named[0]['step']}: rank 1 on {host} is a "
                                                         "straggler: "), warnings
    assert (out / "plots" / "step_times.png").stat().st_size > 10_000
    ratios = [round(e["step_time_s"][1] / e["step_time_s"][0], 1) for e in train]
    print(f"\nrank 1 slowed by 0.4 s per step: ratios to rank 0 per log event {ratios}; named at step "
          f"{named[0]['step']}")


def test_a_rank_stuck_in_its_own_code_reports_where_it_is(tmp_path):
    """Rank 1 stops stepping at step 3 but stays alive in Python; rank 0 waits for it in a collective. After
    hang_timeout_s both write their stacks, rank 0 prints one line per rank, both exit 7 well before the
    collective timeout."""
    out = tmp_path / "run"
    proc = start_trainer(out, "train.max_steps=1000", "hang_timeout_s=5", "collective_timeout_s=60", nproc=2,
                         inject="stall-rank=1:3")
    started = time.time()
    try:
        stdout, stderr = proc.communicate(timeout=150)
    finally:
        proc.kill()
    elapsed = time.time() - started
    assert stderr.count(f"exitcode  : {EXIT_HANG}") == 2, stderr[-3000:]
    lines = re.split(r"[\r\n]", stderr)
    first = next(i for i, line in enumerate(lines) if line.startswith("error: the run hung"))
    assert "hang_timeout_s=5" in lines[first] and f"{out / 'hang'}" in lines[first]
    rank0, rank1 = lines[first + 1], lines[first + 2]
    assert rank0.startswith("  rank 0 (") and " waiting in " in rank0 and "during step 3" in rank0, rank0
    assert "at trainer/runtime/distributed.py:" in rank0, rank0
    assert rank1.startswith("  rank 1 (") and "in no collective" in rank1, rank1
    assert "at tests/probes/inject.py:" in rank1 and "in train_step" in rank1, rank1
    stack = (out / "hang" / "rank-1.txt").read_text()
    assert stack.splitlines()[0] == rank1.strip() and 'inject.py", line' in stack
    assert "in all_reduce" in (out / "hang" / "rank-0.txt").read_text()
    assert not trainer_traceback(stdout + stderr)
    print(f"\nrank 1 stuck in Python at step 3: both ranks reported, exit {EXIT_HANG}, job gone {elapsed:.1f} s "
          "after the start (5 s hang_timeout_s)")
