"""Test lanes: every test belongs to exactly one of `unit`, `multiprocess` or `cluster` (registered in
pyproject.toml), so `bash tools/test.sh -m unit` is a fast lane a newcomer can trust.

- A module whose tests start processes says so at its top: `pytestmark = pytest.mark.multiprocess` (the
  trainer, its ranks, launchers, tools) or `pytestmark = pytest.mark.cluster` (Slurm, munge, network
  namespaces); in a mostly in-process module the few tests that start processes carry the mark themselves.
- Everything else is marked `unit` here, at collection.
- A guard keeps the lanes honest while the tests run: a `unit` test that starts any process, or a
  `multiprocess` test that starts Slurm, fails at once with a line saying which mark it needs. A new slow test
  cannot land silently in the fast lane.
"""
import os
import sys

import pytest

LANES = ("unit", "multiprocess", "cluster")
# What only the cluster lane starts: Slurm's commands and daemons, munge, the local cluster script (network
# namespaces) and `ip`.
CLUSTER_COMMANDS = {"sbatch", "srun", "salloc", "scontrol", "squeue", "scancel", "sinfo", "slurmctld", "slurmd",
                    "munged", "ip", "mount", "umount"}
# The audit events (PEP 578) of every way Python starts a process.
PROCESS_EVENTS = {"subprocess.Popen", "os.fork", "os.forkpty", "os.posix_spawn", "os.spawn", "os.system",
                  "os.exec", "pty.spawn"}

_running_lane = None  # the lane of the test being set up, run or torn down; None between tests


def lane_of(item) -> str:
    """The one lane `item` carries (marked on the test or on its module), `unit` when it carries none."""
    lanes = {mark.name for mark in item.iter_markers() if mark.name in LANES}
    if len(lanes) > 1:
        raise pytest.UsageError(f"{item.nodeid} is marked {' and '.join(sorted(lanes))}: a test belongs to "
                                f"exactly one lane of {', '.join(LANES)}")
    return lanes.pop() if lanes else "unit"


def refusal(lane: str, event: str, args: tuple) -> str | None:
    """Why a test of `lane` may not start this process (an audit event and its arguments), or None."""
    if event not in PROCESS_EVENTS or lane == "cluster":
        return None
    if lane == "unit":
        return (f"a unit test started a process ({event} {_argv(args)}); mark the test (or its module: "
                f"pytestmark = pytest.mark.multiprocess) to move it out of the in-process lane")
    argv = _argv(args)
    if any(os.path.basename(str(a)) in CLUSTER_COMMANDS or "local_slurm.sh" in str(a) for a in argv[:3]):
        return (f"a multiprocess test started {' '.join(map(str, argv[:3]))}; tests that use Slurm, munge or "
                f"network namespaces carry pytest.mark.cluster")
    return None


def _argv(args: tuple) -> list:
    # subprocess.Popen's event carries (executable, args, cwd, env); os.system's (command,); fork's nothing.
    if len(args) >= 2 and isinstance(args[1], (list, tuple)):
        return list(args[1])
    return [str(a) for a in args[:1]]


def _audit(event, args):
    if _running_lane is not None and event in PROCESS_EVENTS:
        reason = refusal(_running_lane, event, args)
        if reason:
            raise RuntimeError(reason)


def pytest_configure(config):
    sys.addaudithook(_audit)  # for the whole session (a hook cannot be removed); idle between tests


def pytest_collection_modifyitems(items):
    for item in items:
        if lane_of(item) == "unit":
            item.add_marker(pytest.mark.unit)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    global _running_lane
    _running_lane = lane_of(item)
    try:
        yield
    finally:
        _running_lane = None
