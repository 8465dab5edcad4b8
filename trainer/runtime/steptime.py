"""How long this rank's training steps take by its own work: the figure that finds a straggler.

Every collective makes the fast ranks wait for the slowest, so the wall time of a step is the same on every
rank and says nothing about which rank holds the others up. A `StepClock` therefore counts a step's time
less the time this rank spent inside the trainer's collectives (trainer/runtime/distributed.py tells it
about each one): the ranks that wait show their own work, the rank they wait for shows its longer one.

Under ZeRO-3 the backbone's weights are gathered by DeepSpeed inside the forward and backward, outside the
trainer's collectives; a rank slowed inside its forward therefore lengthens the others' counted time too,
and shows a smaller ratio to them (README, "When things go wrong").

On CUDA the host queues a step and moves on, so only the device knows when the work ran: marks are events
on the current stream, read at log steps, where the host waits for the device anyway. Elsewhere the marks
are the host's clock.
"""
from __future__ import annotations

import contextlib
import time

import torch


class StepClock:
    """Busy seconds per training step of this rank since the last `take()`.

    Usage: `begin()` / `end()` around each step; collectives call `waiting()` around themselves.
    """

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self._start = None
        self._steps: list[tuple] = []
        """(start, end) marks of the steps since the last take."""
        self._waits: list[tuple] = []
        """(enter, leave) marks of the collectives inside those steps."""

    def _mark(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def _seconds(self, start, end) -> float:
        return start.elapsed_time(end) / 1000 if self.cuda else end - start

    def begin(self) -> None:
        self._start = self._mark()

    def end(self) -> None:
        self._steps.append((self._start, self._mark()))
        self._start = None

    @contextlib.contextmanager
    def waiting(self):
        """Around a collective: its time is not this rank's own work (outside a step: not counted at all)."""
        if self._start is None:
            yield
            return
        enter = self._mark()
        try:
            yield
        finally:
            self._waits.append((enter, self._mark()))

    def take(self) -> float | None:
        """Mean busy seconds per step over the steps since the last take, then start over; None: no step.
        On CUDA this waits for the last step's end mark (call it where the host waits anyway)."""
        if not self._steps:
            return None
        if self.cuda:
            self._steps[-1][1].synchronize()
        busy = sum(self._seconds(a, b) for a, b in self._steps) - sum(self._seconds(a, b) for a, b in self._waits)
        steps = len(self._steps)
        self._steps, self._waits = [], []
        return max(busy, 0.0) / steps
