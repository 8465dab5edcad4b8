"""The test lanes of tests/conftest.py: every test carries exactly one, and the guard holds each lane to what
it promises (a unit test starts no process; only the cluster lane starts Slurm)."""
import os
import subprocess
import sys

import pytest

from tests.conftest import LANES, lane_of

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_collected_test_carries_exactly_one_lane(request):
    for item in request.session.items:
        assert [m.name for m in item.iter_markers() if m.name in LANES] in (["unit"], ["multiprocess"], ["cluster"]), \
            item.nodeid


def test_a_unit_test_cannot_start_a_process(request):
    assert lane_of(request.node) == "unit"
    with pytest.raises(RuntimeError, match="a unit test started a process .*pytest.mark.multiprocess"):
        subprocess.run([sys.executable, "-c", "pass"])
    with pytest.raises(RuntimeError, match="a unit test started a process"):
        os.system("true")


@pytest.mark.multiprocess
def test_a_multiprocess_test_starts_processes_but_not_slurm(request):
    assert lane_of(request.node) == "multiprocess"
    assert subprocess.run([sys.executable, "-c", "print(6 * 7)"], capture_output=True, text=True).stdout == "42\n"
    for command in (["bash", "tools/cluster/local_slurm.sh", "status"], ["sbatch", "--wrap", "true"], ["/usr/bin/ip", "netns"]):
        with pytest.raises(RuntimeError, match="carry pytest.mark.cluster"):
            subprocess.run(command, cwd=REPO)


def test_two_lanes_on_one_test_are_refused():
    class Item:  # what lane_of reads of a collected test
        nodeid = "tests/test_x.py::test_y"

        def iter_markers(self):
            return [pytest.mark.multiprocess.mark, pytest.mark.parametrize.mark, pytest.mark.cluster.mark]

    with pytest.raises(pytest.UsageError, match="test_y is marked cluster and multiprocess: a test belongs"):
        lane_of(Item())
