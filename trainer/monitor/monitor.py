"""What a run reports: metrics.jsonl, TensorBoard scalars, routing-balance summaries, the collapse and
straggler detectors, and pictures.

Only rank 0 writes; the loop calls `log` on every rank and the monitor decides, so no rank checks are
scattered through the loop.
"""
from __future__ import annotations

import json
import math
import os
import resource
import statistics
import sys
from pathlib import Path

import torch


def routing_summary(counts: torch.Tensor, task_names: list[str], prefix: str = "routing_") -> dict:
    """Load-balance figures from all-reduced routing counts (num_tasks, k), keys starting with `prefix`.

    routing_fraction: share of examples per prompt (sums to 1); routing_entropy: its entropy divided by
    log k (1 = perfectly balanced); routing_cv: coefficient of variation of the per-prompt counts;
    routing_table (mixtures only): per task, the share of its examples sent to each prompt.
    """
    totals = counts.sum(0).double()  # (k,)
    k, n = totals.numel(), float(totals.sum())
    fraction = (totals / max(n, 1.0)).tolist()
    entropy = 0.0 - sum(f * math.log(f) for f in fraction if f > 0)  # 0.0 - : never print -0.000
    mean = totals.mean()
    out = {f"{prefix}fraction": fraction,
           f"{prefix}entropy": entropy / math.log(k) if k > 1 else 1.0,
           f"{prefix}cv": float(totals.std(unbiased=False) / mean) if mean > 0 else 0.0}
    if counts.shape[0] > 1:
        rows = counts.double() / counts.sum(1, keepdim=True).clamp(min=1)
        out[f"{prefix}table"] = {name: row.tolist() for name, row in zip(task_names, rows)}
    return out


def peak_memory_mb(device: torch.device) -> float:
    """This process's peak memory so far: allocated CUDA memory on a GPU, resident set size on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


class CollapseDetector:
    """Declares routing collapse once: the clean routing's normalised entropy below `threshold` for
    `patience` log events in a row. Every rank feeds it the same all-reduced entropy, so every rank
    declares it at the same step without a collective of its own.

    Args:
        threshold: normalised entropy below which a log event counts as collapsed (0: never).
        patience: collapsed log events in a row that declare collapse.
    """

    def __init__(self, threshold: float, patience: int):
        self.threshold, self.patience = threshold, patience
        self.streak, self.declared = 0, False

    def update(self, entropy: float) -> bool:
        """True at the one log event where collapse is declared."""
        self.streak = self.streak + 1 if entropy < self.threshold else 0
        if self.declared or self.streak < self.patience:
            return False
        self.declared = True
        return True


class StragglerDetector:
    """Names a rank that stays slow: its step time above `factor` x the median of the other ranks' for
    `patience` train log events in a row. Every rank feeds it the same all-gathered times, so every rank
    declares the same rank at the same step without a collective of its own.

    Args:
        factor: how many times the others' median a rank's time must exceed to count as slow (> 1).
        patience: slow log events in a row that declare the rank a straggler; declared once per slow spell.
        world: the number of ranks.
    """

    def __init__(self, factor: float, patience: int, world: int):
        self.factor, self.patience = factor, patience
        self.streaks = [0] * world

    def update(self, times: list[float]) -> list[tuple[int, float, float]]:
        """(rank, its step time, the median of the others') for each rank declared at this event."""
        declared = []
        for rank, mine in enumerate(times):
            others = statistics.median(times[:rank] + times[rank + 1:])
            slow = others > 0 and mine > self.factor * others
            self.streaks[rank] = self.streaks[rank] + 1 if slow else 0
            if self.streaks[rank] == self.patience:
                declared.append((rank, mine, others))
        return declared


class Monitor:
    """Appends one JSON object per event to `metrics.jsonl` and mirrors numbers to TensorBoard.

    A full disk must not end rank 0 alone (the other ranks would wait in their next collective until the
    timeout): events that cannot be written stay in memory and go out with the next one that can, saying so
    once; TensorBoard, written by a thread of its own, is given up with a warning. Checkpoints are where the
    ranks agree to stop (trainer/runtime/storage.py).
    """

    def __init__(self, output_dir: str, enabled: bool):
        self.enabled, self.writer, self.fd, self.output_dir = enabled, None, None, Path(output_dir)
        self._unwritten = b""
        """Bytes of events not yet written (the storage refused them); written first, with the next event."""
        self._warned = False
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            # A file descriptor, not a buffered file: os.write says how much it wrote, so a line cut by a full
            # disk is completed later rather than written twice.
            self.fd = os.open(Path(output_dir) / "metrics.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            self.writer = SummaryWriter(str(Path(output_dir) / "tensorboard"))

    def log(self, event: dict) -> None:
        if not self.enabled:
            return
        self._unwritten += (json.dumps(event) + "\n").encode()
        self._write_unwritten()
        if self.writer is None:
            return
        kind, step = event.get("event", "train"), event["step"]
        try:
            for key, value in event.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "step":
                    self.writer.add_scalar(f"{kind}/{key}", value, step)
                elif key.endswith("routing_fraction") or key == "step_time_s":  # one scalar per prompt or rank
                    for i, f in enumerate(value):
                        self.writer.add_scalar(f"{kind}/{key}/{i}", f, step)
                elif key.endswith("routing_table"):
                    for task, shares in value.items():
                        for i, f in enumerate(shares):
                            self.writer.add_scalar(f"{kind}/{key}/{task}/{i}", f, step)
        except OSError as e:
            self._give_up_tensorboard(e)

    def _write_unwritten(self) -> None:
        try:
            while self._unwritten:
                self._unwritten = self._unwritten[os.write(self.fd, self._unwritten):]
        except OSError as e:
            if not self._warned:
                print(f"warning: {self.output_dir / 'metrics.jsonl'}: {e.strerror}; events are kept in memory "
                      "until they can be written", file=sys.stderr)
                self._warned = True

    def _give_up_tensorboard(self, error: OSError) -> None:
        print(f"warning: {self.output_dir / 'tensorboard'}: {error.strerror}; no more TensorBoard events in this "
              "run (metrics.jsonl has them all)", file=sys.stderr)
        writer, self.writer = self.writer, None
        try:
            writer.close()
        except OSError:
            pass  # the same storage error again

    def resumed(self, step: int, checkpoint: Path, world_size: int, previous_world_size: int) -> None:
        """A run continues from the checkpoint of `step`: metrics.jsonl keeps one history, so the events
        logged after that checkpoint (then lost) are removed, and a `resume` event says where it went on.

        Rewritten in place, not replaced, because this monitor holds the file open for appending."""
        if self.enabled:
            with open(self.output_dir / "metrics.jsonl", "r+") as f:
                kept = [line for line in f if _step_of(line) <= step]
                f.seek(0)
                f.writelines(kept)
                f.truncate()
        self.log({"event": "resume", "step": step, "checkpoint": str(checkpoint), "world_size": world_size,
                  "previous_world_size": previous_world_size})

    def close(self, plots: bool = False) -> None:
        """Close the files; with `plots`, first draw the run's pictures (trainer/monitor/plots.py) into
        output_dir/plots/ and TensorBoard, and say where they are."""
        if not self.enabled:
            return
        self._write_unwritten()
        os.close(self.fd)
        if plots:
            from trainer.monitor.plots import write_plots  # matplotlib: only where pictures are drawn

            try:
                paths = write_plots(self.output_dir, self.writer)
            except (ValueError, OSError) as e:  # a picture must never fail a run that has finished
                print(f"warning: no pictures drawn ({e})")
            else:
                if paths:
                    print(f"pictures: {self.output_dir / 'plots'}/ ({', '.join(p.name for p in paths)})")
        if self.writer is not None:
            try:
                self.writer.close()
            except OSError as e:
                self._give_up_tensorboard(e)


def _step_of(line: str) -> float:
    try:
        return json.loads(line).get("step", 0)
    except (json.JSONDecodeError, AttributeError):
        return float("inf")  # a line cut short by the crash that we are resuming from
