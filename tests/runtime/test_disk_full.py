"""A full disk during a checkpoint, on 2 real ranks: output_dir on a small tmpfs that tests/probes/inject.py fills
right after the first checkpoint. It prints what it measured (the README's "When things go wrong" quotes it).
Mounting needs root, so it runs in the cluster lane."""
import os
import re
import subprocess
import time

import pytest
import torch
from safetensors.torch import load_file

from tests.launch import events, run_trainer, trainer_traceback
from trainer.runtime.checkpoint import verify
from trainer.runtime.guard import EXIT_STORAGE

pytestmark = pytest.mark.cluster


# A checkpoint after step 1 (the storage probe) and every 3 steps: the disk is filled right after the first.
DISK = ["train.max_steps=6", "checkpoint.every=3", "checkpoint.at_first_step=true"]


@pytest.fixture
def small_disk(tmp_path):
    """A 16 MiB tmpfs mounted for the test, unmounted afterwards (mounting needs root: the cluster lane's, which
    CI runs as root; -m "not cluster" leaves it out elsewhere)."""
    assert os.geteuid() == 0, "mounting a small filesystem needs root: run the cluster lane as root"
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "--lazy", str(mount)], check=True)


def test_disk_full_stops_every_rank_at_one_step_and_the_same_command_resumes_exactly(small_disk, tmp_path):
    """output_dir on a small filesystem, filled right after the first checkpoint (step 1): the save of step 3
    fails on rank 0; both ranks leave at once with exit code 6 and one error line, no traceback; `latest` still
    names step-000001 and nothing half-written is left. With space freed the same command resumes from step 1 and
    ends where an uninterrupted run ends."""
    reference = tmp_path / "reference"
    run_trainer(reference, *DISK, nproc=2)
    out = small_disk / "run"
    proc = run_trainer(out, *DISK, nproc=2, inject="fill-disk-after=1", check=False)
    ended = time.time()
    output = proc.stdout + proc.stderr
    filled = float(re.search(r"inject: filled the disk after step 1: \d+ bytes at ([\d.]+)", proc.stderr).group(1))
    assert proc.stderr.count(f"exitcode  : {EXIT_STORAGE}") == 2, proc.stderr[-3000:]  # both ranks, torchrun says
    errors = [line for line in re.split(r"[\r\n]", output) if line.startswith("error:")]
    assert errors == [f"error: checkpoint step-000003 could not be written in {out / 'checkpoints'}: No space left on "
                      f"device [ENOSPC]; the run stopped after step 3; {out / 'checkpoints' / 'latest'} names "
                      "step-000001, the last complete checkpoint; free space on that filesystem (or point output_dir "
                      "at another one), then run the same command"], output[-3000:]
    assert not trainer_traceback(output), output[-5000:]
    root = out / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step-000001"]
    assert (root / "latest").read_text() == "step-000001\n" and verify(root / "step-000001")["reason"] == "first_step"
    print(f"\ndisk full after step 1: exit {EXIT_STORAGE} on both ranks, the job gone {ended - filled:.1f} s after the "
          "disk was filled (2 steps and the failed save included)")

    (out / "filler").unlink()
    resumed = run_trainer(out, *DISK, nproc=2)
    assert "resuming from" in resumed.stdout and "step-000001 at step 1" in resumed.stdout
    assert [e["step"] for e in events(out, "resume")] == [1]
    assert [e["step"] for e in events(out, "train")] == list(range(1, 7))
    ref = {e["step"]: e["loss"] for e in events(reference, "train")}
    got = {e["step"]: e["loss"] for e in events(out, "train")}
    assert got == ref  # exactly: the same steps from the same state and RNG
    final, expected = load_file(out / "method_final.safetensors"), load_file(reference / "method_final.safetensors")
    assert all(torch.equal(final[k], expected[k]) for k in expected)
    print("resumed with space freed: losses and final parameters equal to the uninterrupted run's")


