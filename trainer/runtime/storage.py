"""Writing the run's files when the storage may fail: a full disk, a quota, an I/O error, lost permission.

Rank 0 writes the run's files (checkpoints, predictions, the final state) while the other ranks wait. If
rank 0 failed alone, it would leave with a traceback and the others would wait in their next collective
until the collective timeout. Instead rank 0 catches the OSError, and every rank takes part in one small
all-reduce of a status code right after the write (`written_by_main`): it doubles as the barrier that ended
the write anyway, and every rank raises the same `StorageError` at the same point. trainer/main.py turns it
into one `error:` line and exit code 6 (EXIT_STORAGE in trainer/runtime/guard.py).
"""
from __future__ import annotations

import errno as errnos
import os
from pathlib import Path
from typing import Callable

from trainer.runtime import distributed
from trainer.runtime.distributed import Dist

# What to do about each cause; anything else is treated like an I/O error.
REMEDY = {
    errnos.ENOSPC: "free space on that filesystem (or point output_dir at another one)",
    errnos.EDQUOT: "free space within your quota there, or have it raised (or point output_dir elsewhere)",
    errnos.EROFS: "the filesystem went read-only: have it remounted read-write (or point output_dir elsewhere)",
    errnos.EACCES: "make it writable by this user again (or point output_dir elsewhere)",
    errnos.EPERM: "make it writable by this user again (or point output_dir elsewhere)",
}
IO_REMEDY = "check that filesystem and the node's storage (dmesg), or point output_dir elsewhere"


class StorageError(RuntimeError):
    """A run's file could not be written: raised on every rank at the same point, with one line that names
    what, where, the cause and what to do."""


def describe(code: int, what: str, where: Path, consequence: str) -> str:
    """One line: `what` could not be written in `where` because of errno `code`; `consequence` says what
    state the run was left in and how it continues."""
    name = errnos.errorcode.get(code, str(code))
    return (f"{what} could not be written in {where}: {os.strerror(code)} [{name}]; {consequence}; "
            f"{REMEDY.get(code, IO_REMEDY)}, then run the same command")


def written_by_main(dist: Dist, what: str, where: Path, consequence: Callable[[], str], write: Callable[[], None],
                    cleanup: Callable[[], None] = lambda: None) -> None:
    """Rank 0 calls `write()`; every rank then learns, in one collective, whether it failed with an OSError,
    and raises StorageError if so. Call on every rank at the same point.

    consequence: called on every rank after a failure only, for the state the run is left in (see describe).
    cleanup: run by rank 0 after a failed write (best effort: removing what the write left half done must not
    fail in turn on the same storage).
    """
    code = 0
    if dist.is_main:
        try:
            write()
        except OSError as e:
            code = e.errno or errnos.EIO  # an OSError raised without an errno is taken for an I/O error
            try:
                cleanup()
            except OSError:
                pass  # best effort: the error that matters is the one reported
    code = distributed.max_over_ranks(code, dist.device)  # every rank, success or not: also the barrier
    if code:
        raise StorageError(describe(code, what, where, consequence()))
