"""A save that the storage refuses: every rank raises the same StorageError, nothing half-written stays, and
`latest` keeps naming the last complete checkpoint. In-process: the two collectives of a save are stood in for
(one rank's view, or another rank's), the writes are real files and the failures real OSErrors.
The same on a real full filesystem with 2 ranks: tests/runtime/test_faults.py."""
import errno
import os

import pytest
import torch

from tests.runtime.test_checkpoint import empty_state
from trainer.runtime import checkpoint, distributed, storage
from trainer.runtime.checkpoint import verify
from trainer.runtime.distributed import Dist
from trainer.runtime.storage import StorageError

ONE_RANK = Dist(0, 1, 0, torch.device("cpu"))


@pytest.fixture
def collectives(monkeypatch):
    """The save's collectives as one rank sees them; `codes` are the other ranks' status codes."""
    codes = []
    monkeypatch.setattr(distributed, "all_gather_objects", lambda obj: [obj])
    monkeypatch.setattr(distributed, "max_over_ranks", lambda value, device: max([value, *codes]))
    return codes


def failing_at(monkeypatch, name: str, code: int = errno.ENOSPC):
    """Make the write of the file called `name` fail with `code`, after half of it was written."""
    real = checkpoint._write_bytes

    def write(path, data):
        if path.name == name:
            with open(path, "wb") as f:
                f.write(data[:len(data) // 2])
            raise OSError(code, os.strerror(code), str(path))
        real(path, data)

    monkeypatch.setattr(checkpoint, "_write_bytes", write)


@pytest.mark.parametrize("name", ["state.pt", "meta.json", ".latest.tmp"])
def test_a_refused_save_raises_and_leaves_the_last_checkpoint_named(tmp_path, collectives, monkeypatch, name):
    """Refused at a checkpoint file, at meta.json, or at the new `latest` (the folder was complete by then)."""
    state, root = empty_state(), tmp_path / "checkpoints"
    state.step = 1
    checkpoint.save(state, ONE_RANK, root, keep=3, reason="periodic")
    failing_at(monkeypatch, name)
    state.step = 2
    with pytest.raises(StorageError) as caught:
        checkpoint.save(state, ONE_RANK, root, keep=3, reason="periodic")
    message = str(caught.value)
    assert message.startswith(f"checkpoint step-000002 could not be written in {root}: No space left on device "
                              "[ENOSPC]; the run stopped after step 2;")
    assert f"{root / 'latest'} names step-000001" in message and "free space on that filesystem" in message
    assert message.endswith("then run the same command") and "\n" not in message
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step-000001"]  # no .tmp-*, no step-000002
    assert (root / "latest").read_text() == "step-000001\n" and verify(root / "step-000001")["step"] == 1


def test_a_first_save_refused_says_the_run_starts_over(tmp_path, collectives, monkeypatch):
    failing_at(monkeypatch, "method.safetensors", errno.EDQUOT)
    state = empty_state()
    state.step = 1
    with pytest.raises(StorageError, match=r"\[EDQUOT\]; the run stopped after step 1; no checkpoint was written yet, "
                                           "so the run will start at step 0; free space within your quota"):
        checkpoint.save(state, ONE_RANK, tmp_path / "checkpoints", keep=3, reason="first_step")
    assert list((tmp_path / "checkpoints").iterdir()) == []


def test_a_rank_that_wrote_nothing_raises_the_writers_error(tmp_path, collectives):
    """Rank 1 never writes; the status code it gets from rank 0 makes it raise the same error at the same point."""
    collectives.append(errno.EIO)  # rank 0's code
    written = []
    with pytest.raises(StorageError, match=r"the run files could not be written in .*: Input/output error \[EIO\]; "
                                           "stopped; check that filesystem"):
        storage.written_by_main(Dist(1, 2, 1, torch.device("cpu")), "the run files", tmp_path, lambda: "stopped",
                                lambda: written.append("rank 1 wrote"))
    assert written == []


def test_a_successful_write_raises_nowhere(tmp_path, collectives):
    storage.written_by_main(ONE_RANK, "x", tmp_path, lambda: "", lambda: (tmp_path / "x").write_text("x"))
    assert (tmp_path / "x").read_text() == "x"


@pytest.mark.parametrize("code, remedy", [
    (errno.ENOSPC, "free space on that filesystem"), (errno.EDQUOT, "quota"), (errno.EROFS, "read-only"),
    (errno.EACCES, "writable by this user"), (errno.EIO, "dmesg"), (errno.ENXIO, "dmesg")])
def test_each_cause_says_what_to_do(tmp_path, code, remedy):
    line = storage.describe(code, "checkpoint step-000004", tmp_path, "the run stopped after step 4")
    assert f"[{errno.errorcode[code]}]" in line and remedy in line and str(tmp_path) in line


def test_an_oserror_without_errno_counts_as_an_io_error(tmp_path, collectives):
    def write():
        raise OSError("no errno")

    with pytest.raises(StorageError, match=r"\[EIO\]"):
        storage.written_by_main(ONE_RANK, "x", tmp_path, lambda: "", write)
