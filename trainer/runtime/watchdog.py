"""Where each rank was when the run hung: stacks and last collectives, written before the job ends.

A rank that stops (a dead GPU, a frozen node, SIGSTOP) leaves every other rank waiting in a collective until
`collective_timeout_s` ends the job, and nobody learns where anyone was. So each rank runs a `Watchdog`: a
daemon thread that wakes every second or so and compares two timestamps, costing the steps nothing. When no
training step has finished for `hang_timeout_s` (evaluation, which has no steps, aside), or the rank has
waited that long inside one collective of trainer/runtime/distributed.py, it:

1. writes `output_dir/hang/rank-N.txt`: one line saying where the rank is (the collective it waits in, for
   how long, during which step, and the innermost frame of the checkout), then the stack of every thread as
   `faulthandler` prints it;
2. waits a little for the other ranks' reports; the lowest rank that reported prints an `error:` line and
   one line per rank (a rank without a report is stopped, dead or stuck outside Python), the others linger a
   moment longer so that a launcher does not end the job before it is printed;
3. ends the process with exit code 7 (EXIT_HANG), before the collective timeout would.

The default `hang_timeout_s` (0.8 x collective_timeout_s) leaves time for all of it before the timeout.
"""
from __future__ import annotations

import contextlib
import faulthandler
import os
import sys
import threading
import time
from pathlib import Path

from trainer.paths import PACKAGE_DIR, REPO_ROOT
from trainer.runtime import distributed
from trainer.runtime.guard import EXIT_HANG

REPORTS = "hang"


def report_path(output_dir, rank: int) -> Path:
    return Path(output_dir) / REPORTS / f"rank-{rank}.txt"


class Watchdog:
    """Ends a hung run with every rank's whereabouts written down (see the module docstring).

    Args:
        output_dir: the run folder; reports go to output_dir/hang/.
        rank, hosts, pids: this rank, and the host and process id of every rank (rank order).
        timeout_s: hang_timeout_s, resolved (> 0).
        grace_s: the longest it waits for the other ranks' reports before printing.
    """

    def __init__(self, output_dir, rank: int, hosts: tuple[str, ...], pids: tuple[int, ...], timeout_s: float,
                 grace_s: float):
        self.output_dir, self.rank, self.hosts, self.pids = Path(output_dir), rank, hosts, pids
        self.timeout_s, self.grace_s = timeout_s, grace_s
        self.step = 0
        """The last training step this rank finished."""
        self._beat = time.monotonic()
        self._paused = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = 0.0  # wall time: reports older than this are from an earlier run in output_dir

    def start(self, step: int) -> None:
        self.step, self._beat, self._started = step, time.monotonic(), time.time()
        self._stop.clear()
        self._thread = threading.Thread(target=self._watch, name="smop-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def beat(self, step: int) -> None:
        """Step `step` finished (two attribute writes: called every step)."""
        self.step, self._beat = step, time.monotonic()

    @contextlib.contextmanager
    def paused(self):
        """No steps are expected meanwhile (evaluation): only a collective that waits too long counts."""
        self._paused = True
        try:
            yield
        finally:
            self._paused, self._beat = False, time.monotonic()

    # --- the watching thread -------------------------------------------------------------------------

    def _watch(self) -> None:
        period = min(1.0, self.timeout_s / 10)
        while not self._stop.wait(period):
            why = self._hung()
            if why:
                self._report(why)

    def _hung(self) -> str | None:
        note = distributed.last_collective()
        if note is not None and not note.returned and time.time() - note.entered > self.timeout_s:
            return f"rank {self.rank} waited {time.time() - note.entered:.0f} s in {note.op}"
        quiet = time.monotonic() - self._beat
        if not self._paused and quiet > self.timeout_s:
            return f"no training step finished for {quiet:.0f} s"
        return None

    def _report(self, why: str) -> None:
        """Write this rank's report, print the summary if this is the lowest rank that reported, exit 7."""
        where = self.whereabouts()
        path = report_path(self.output_dir, self.rank)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "w") as f:
                f.write(where + "\n\nStack of every thread of this rank (most recent call first):\n")
                f.flush()
                faulthandler.dump_traceback(file=f, all_threads=True)
        except OSError as e:  # the report cannot be stored: say where this rank is on stderr instead
            print(f"{where} (no report written: {path}: {e.strerror})", file=sys.stderr)
        reports = self._wait_for_reports()
        if min(reports, default=self.rank) >= self.rank:
            print("\n" + self.summary(why, reports), file=sys.stderr)  # \n: a progress bar's line may be open
        else:
            # A lower rank prints; leaving first would let the launcher tear the job down while it still waits.
            time.sleep(min(5.0, self.grace_s + 1.0))
        sys.stdout.flush()
        sys.stderr.flush()
        # The main thread is stuck (in a collective, most likely): end the process from here.
        os._exit(EXIT_HANG)

    def whereabouts(self) -> str:
        """One line: this rank, its host and pid, the collective it is in (or the last one it left) and the
        innermost frame of the checkout in its main thread."""
        note, now = distributed.last_collective(), time.time()
        head = f"rank {self.rank} ({self._host(self.rank)}, pid {os.getpid()})"
        during = f"during step {self.step + 1}"
        if note is None:
            state = f"in no collective yet, {during}"
        elif not note.returned:
            state = f"waiting in {note.op} for {now - note.entered:.1f} s, {during}"
        else:
            state = f"in no collective (the last, {note.op}, was entered {now - note.entered:.1f} s ago), {during}"
        return f"{head}: {state}, at {innermost_frame(threading.main_thread())}"

    def _wait_for_reports(self) -> dict[int, str]:
        """{rank: first line} of the reports of this run's ranks, once all are in or grace_s has passed."""
        deadline = time.monotonic() + self.grace_s
        while True:
            reports = self.read_reports()
            if len(reports) == len(self.hosts) or time.monotonic() >= deadline:
                return reports
            time.sleep(0.2)

    def read_reports(self) -> dict[int, str]:
        found = {}
        for rank in range(len(self.hosts)):
            path = report_path(self.output_dir, rank)
            try:
                if path.stat().st_mtime >= self._started:
                    found[rank] = path.read_text().split("\n", 1)[0]
            except OSError:
                continue
        return found

    def summary(self, why: str, reports: dict[int, str]) -> str:
        """The error line and one line per rank."""
        lines = [f"error: the run hung ({why}; hang_timeout_s={self.timeout_s:g}); where each rank is "
                 f"(stacks in {self.output_dir / REPORTS}/); exit code {EXIT_HANG}: fix or replace the node, then "
                 "run the same command to resume from checkpoints/latest"]
        for rank in range(len(self.hosts)):
            pid = self.pids[rank] if rank < len(self.pids) else "PID"
            lines.append("  " + reports.get(rank, f"rank {rank} ({self._host(rank)}, pid {pid}): no report: stopped, "
                                                  f"dead or stuck outside Python (on its node: py-spy dump --pid {pid})"))
        return "\n".join(lines)

    def _host(self, rank: int) -> str:
        return self.hosts[rank] if rank < len(self.hosts) else "?"


def innermost_frame(thread: threading.Thread) -> str:
    """'path:line in function' of the innermost frame of `thread` in this checkout (trainer/, tests/,
    tools/), else its innermost frame: where the rank's own code is, not torch's wrapper around a call."""
    frame = sys._current_frames().get(thread.ident)
    innermost = None
    while frame is not None:
        path = Path(frame.f_code.co_filename)
        if innermost is None:
            innermost = frame
        # The package itself wherever it is installed; the rest of a checkout, but not a virtual environment in it.
        if path.is_relative_to(PACKAGE_DIR) or (path.is_relative_to(REPO_ROOT) and "site-packages" not in path.parts):
            return f"{path.relative_to(PACKAGE_DIR.parent)}:{frame.f_lineno} in {frame.f_code.co_name}"
        frame = frame.f_back
    if innermost is None:
        return "an unknown place"
    return f"{innermost.f_code.co_filename}:{innermost.f_lineno} in {innermost.f_code.co_name}"


def resolve_timeout(hang_timeout_s: float, collective_timeout_s: float) -> tuple[float, float]:
    """(timeout, grace): hang_timeout_s (0: 0.8 x collective_timeout_s) and how long to wait for the other
    ranks' reports: at most 10 s and half the time left before the collective timeout ends the job."""
    timeout = hang_timeout_s or 0.8 * collective_timeout_s
    return timeout, min(10.0, (collective_timeout_s - timeout) / 2)
