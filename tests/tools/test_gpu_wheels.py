"""tools/cluster/gpu_wheels.sh in its dry run: the wheel step a GPU machine's image needs, as it would run it
(the real run needs a package index and builds DeepSpeed's wheel: a minute of CI for nothing new)."""
import os
import subprocess
import sys

import pytest

from tests.launch import REPO

pytestmark = pytest.mark.multiprocess


def test_dry_run_builds_deepspeed_of_this_environment_and_fetches_its_dependencies_for_the_gpu_python():
    import deepspeed

    proc = subprocess.run(["bash", "tools/cluster/gpu_wheels.sh"], cwd=REPO, capture_output=True, text=True,
                          timeout=60, env={**os.environ, "GPU_WHEELS_DRY_RUN": "1", "PYTHON_VERSION": "3.12",
                                           "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"})
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "would run: mkdir -p .whl"
    assert f"pip wheel -q --no-deps -w .whl deepspeed=={deepspeed.__version__}" in lines[1]
    downloads = [line for line in lines if " pip download " in line]
    assert len(downloads) == 9 and all("--python-version 3.12" in line and "manylinux_2_28_x86_64" in line
                                       for line in downloads)
    assert {line.split()[-1] for line in downloads} >= {"hjson", "pydantic", "pydantic-core", "datasets"}
