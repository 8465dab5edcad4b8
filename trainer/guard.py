"""Stopping cleanly: pre-emption signals, non-finite steps, and the exit codes a scheduler reads.

SIGUSR1 (Slurm's `--signal=B:USR1@600`) and SIGTERM (Slurm's cancel/pre-empt, torchrun's tear-down) only set
a flag. Once per step the flag and the step's loss travel in one two-number all-reduce, so every rank learns
at the same step that some rank was signalled and that some rank saw a non-finite loss; they then all stop,
or all skip the update, together. A rank acting alone would leave the others waiting in a collective.
"""
from __future__ import annotations

import signal

import torch

from trainer import distributed

EXIT_OK = 0
EXIT_BAD_INPUT = 2
"""Bad config, data, ds_config or checkpoint: one line on stderr names the file/line/key; nothing written."""
EXIT_REQUEUE = 3
"""Stopped by SIGUSR1/SIGTERM or checkpoint.stop_at after saving a checkpoint: requeue the same command."""
EXIT_NONFINITE = 4
"""train.max_nonfinite non-finite steps in a row; the last checkpoint is the last good state."""

STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)


class NonFiniteLoss(RuntimeError):
    """Raised on every rank at the same step (the loss it tests is all-reduced)."""


class StepGuard:
    """Per-step agreement between ranks on two questions: apply this update? stop after this step?

    Args:
        max_nonfinite: non-finite steps in a row after which `NonFiniteLoss` is raised.
        stop_at: stop after this step as if signalled (0: never).
    """

    def __init__(self, max_nonfinite: int, stop_at: int = 0):
        self.max_nonfinite, self.stop_at = max_nonfinite, stop_at
        self.skipped = 0
        """Non-finite steps skipped over the whole run (restored from the checkpoint)."""
        self.streak = 0
        self.signalled: str | None = None
        """Name of the signal this rank received, if any."""
        self.stop_requested = False
        """True on every rank once any rank was signalled (agreed through the per-step all-reduce)."""
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

    def update_allowed(self, step_loss: torch.Tensor, params: list[torch.nn.Parameter], step: int) -> bool:
        """Called by every rank after the gradients are all-reduced, before the optimiser step.

        step_loss: this rank's summed loss of the step (a scalar). `step` is 1-based, as logged.
        Returns False when the update must be skipped; raises NonFiniteLoss after too many in a row.
        """
        flags = torch.stack([step_loss.detach().float().reshape(()).to(params[0].device),
                             torch.tensor(float(self.signalled is not None), device=params[0].device)])
        loss, signalled = distributed.all_reduce_sum(flags).tolist()
        self.stop_requested |= signalled > 0 or (self.stop_at > 0 and step >= self.stop_at)
        # Gradients are identical on every rank after their all-reduce, so this test needs no collective.
        finite = torch.isfinite(torch.tensor(loss)) and all(
            p.grad is None or bool(torch.isfinite(p.grad).all()) for p in params)
        if finite:
            self.streak = 0
            return True
        self.skipped += 1
        self.streak += 1
        if self.streak >= self.max_nonfinite:
            raise NonFiniteLoss(f"step {step}: loss or gradient not finite for {self.streak} steps in a row "
                                f"(train.max_nonfinite={self.max_nonfinite}); stopping, the last checkpoint "
                                "holds the last good state (lower train.lr or check the data)")
        return False
