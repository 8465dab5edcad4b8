"""Stopping cleanly: pre-emption signals, non-finite steps, and the exit codes a scheduler reads.

SIGUSR1 (Slurm's `--signal=B:USR1@600`) and SIGTERM (Slurm's cancel/pre-empt, torchrun's tear-down) only set
a flag. Every step the flag and the step's loss travel in one two-number all-reduce, so every rank learns
at the same step that some rank was signalled and that some rank saw a non-finite loss; they then all stop,
or all skip the update, together. A rank acting alone would leave the others waiting in a collective.

The host never waits for the step it has just queued: the update is skipped on the device (see
`trainer.optim.masked_step`), and the flags reach the host one step late, or at once at log and checkpoint
steps, where the host waits anyway.
"""
from __future__ import annotations

import signal

import torch

from trainer.runtime import distributed

EXIT_OK = 0
EXIT_BAD_INPUT = 2
"""Bad config, data, ds_config or checkpoint: one line on stderr names the file/line/key; nothing written."""
EXIT_REQUEUE = 3
"""Stopped by SIGUSR1/SIGTERM or checkpoint.stop_at after saving a checkpoint: requeue the same command."""
EXIT_NONFINITE = 4
"""train.max_nonfinite non-finite steps in a row; the last checkpoint is the last good state."""
EXIT_COLLAPSE = 5
"""monitor.stop_on_collapse: the clean routing collapsed onto one prompt; a checkpoint was saved."""
EXIT_STORAGE = 6
"""A file of the run (a checkpoint, predictions, the final state) could not be written: disk full, quota, I/O
error, permission. Every rank left at the same point; checkpoints/latest names the last complete checkpoint.
Free space and run the same command (trainer/runtime/storage.py)."""
EXIT_HANG = 7
"""No training step finished within hang_timeout_s, or a rank waited that long in one collective: every rank
that could wrote its stack to output_dir/hang/ and the lowest of them printed where each rank was
(trainer/runtime/watchdog.py). Fix or replace the node, then run the same command."""

STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)


class NonFiniteLoss(RuntimeError):
    """Raised on every rank at the same step (the loss it tests is all-reduced)."""


class StepGuard:
    """Agreement between ranks, per step, on two questions: apply this update? stop after this step?

    Args:
        max_nonfinite: non-finite steps in a row after which `NonFiniteLoss` is raised.
        stop_at: stop after this step as if signalled (0: never).
    """

    def __init__(self, max_nonfinite: int, stop_at: int = 0):
        self.max_nonfinite, self.stop_at = max_nonfinite, stop_at
        self.skipped = 0
        """Non-finite steps skipped over the whole run (restored from the checkpoint); counts polled steps."""
        self.streak = 0
        """Non-finite steps in a row up to the last polled step."""
        self.signalled: str | None = None
        """Name of the signal this rank received, if any."""
        self.stop_requested = False
        """True on every rank, at the same step, once any rank was signalled (or stop_at was reached)."""
        self._pending: list[tuple[int, distributed.HostCopy]] = []
        self._previous = {}

    def install(self) -> None:
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._on_signal)

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _on_signal(self, signum, frame) -> None:
        # Only a flag: the handler may interrupt a collective or a save, which must run to its end.
        self.signalled = signal.Signals(signum).name

    def gate(self, step: int, step_loss: torch.Tensor, grads: list[torch.Tensor]) -> torch.Tensor:
        """Called by every rank after the gradients are all-reduced, before the optimiser step.

        step_loss: this rank's summed loss of the step (a scalar); `step` is 1-based, as logged. Returns a
        device bool, "apply this update": the loss summed over ranks and every gradient are finite (the
        gradients are identical on every rank after their all-reduce, so their test needs no collective).
        Reads nothing on the host; `poll` does.
        """
        device = step_loss.device
        flags = torch.stack([step_loss.detach().float().reshape(()),
                             torch.full((), float(self.signalled is not None), device=device)])
        loss, signalled = distributed.all_reduce_sum(flags).unbind()
        ok = torch.isfinite(loss)
        for g in grads:
            ok = ok & torch.isfinite(g).all()
        self._pending.append((step, distributed.HostCopy(torch.stack([ok.float(), signalled]))))
        self.stop_requested |= self.stop_at > 0 and step >= self.stop_at
        return ok

    def poll(self, before: int, on_skip=lambda step: None) -> None:
        """Read the flags of the gated steps before step `before`, in order; call on_skip(step) for each
        skipped one. Raises NonFiniteLoss at the step that makes max_nonfinite in a row."""
        while self._pending and self._pending[0][0] < before:
            step, flags = self._pending.pop(0)
            ok, signalled = flags.read()
            self.stop_requested |= signalled > 0
            if ok:
                self.streak = 0
                continue
            self.skipped += 1
            self.streak += 1
            if self.streak >= self.max_nonfinite:
                self._pending.clear()
                raise NonFiniteLoss(f"step {step}: loss or gradient not finite for {self.streak} steps in a row "
                                    f"(train.max_nonfinite={self.max_nonfinite}); stopping, the last checkpoint "
                                    "holds the last good state (lower train.lr or check the data)")
            on_skip(step)
