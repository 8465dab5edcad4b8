"""Start the real trainer with one fault injected into it, deterministically, for the fault tests.

    torchrun --nproc_per_node 2 -m tests.probes.inject FAULT [key=value ...]

FAULT is one of
- `fill-disk-after=N`: once rank 0's checkpoint of step N is written, fill output_dir's filesystem
  (output_dir/filler, written until the filesystem refuses), so that the next write fails for want of space;
- `slow-rank=R:SECONDS`: rank R sleeps SECONDS at the start of every training step (a slow node: its input
  pipeline, CPU or GPU), so that every other rank waits for it in the step's first collective;
- `stall-rank=R:STEP`: rank R sleeps for good at the start of step STEP, alive and in Python (unlike a
  SIGSTOPped rank), so that its watchdog can report where it is.
The rest of the command line goes to the trainer (trainer/main.py) unchanged. Nothing here ships to users.
"""
from __future__ import annotations

import errno
import os
import sys
import time
from pathlib import Path

from trainer import loop
from trainer.main import cli
from trainer.runtime import checkpoint


def fill(directory: Path) -> int:
    """Write directory/filler until its filesystem has no room left; the bytes written."""
    written, block = 0, b"\0" * (1 << 16)
    with open(directory / "filler", "wb", buffering=0) as f:
        while block:
            try:
                written += f.write(block)
            except OSError as e:
                if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise
                block = block[:len(block) // 2]  # the last few bytes, in smaller writes
    return written


def fill_disk_after(step: int) -> None:
    real_save = checkpoint.save

    def save(state, dist, root, keep, reason):
        path = real_save(state, dist, root, keep, reason)
        if dist.is_main and state.step == step:
            written = fill(Path(root).parent)
            print(f"inject: filled the disk after step {step}: {written} bytes at {time.time():.3f}", file=sys.stderr)
        return path

    checkpoint.save = save


def slow_rank(rank: int, seconds: float) -> None:
    real_step = loop.train_step

    def train_step(run):
        if run.dist.rank == rank:
            time.sleep(seconds)
        real_step(run)

    loop.train_step = train_step


def stall_rank(rank: int, at_step: int) -> None:
    real_step = loop.train_step

    def train_step(run):
        if run.dist.rank == rank and run.state.step + 1 == at_step:
            while True:  # alive, in Python, and never done: a rank stuck in its own code
                time.sleep(1)
        real_step(run)

    loop.train_step = train_step


def main() -> None:
    fault, _, value = sys.argv.pop(1).partition("=")
    if fault == "fill-disk-after":
        fill_disk_after(int(value))
    elif fault == "slow-rank":
        rank, seconds = value.split(":")
        slow_rank(int(rank), float(seconds))
    elif fault == "stall-rank":
        rank, step = value.split(":")
        stall_rank(int(rank), int(step))
    else:
        raise SystemExit(f"inject: unknown fault '{fault}' (see {os.path.relpath(__file__)})")
    cli()


if __name__ == "__main__":
    main()
