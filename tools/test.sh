#!/usr/bin/env bash
# The project's one test command, from a bare Debian machine to a passing suite (README "Tests", .ci/run):
#
#   bash tools/test.sh [PYTEST ARGS...]     e.g. bash tools/test.sh -m unit   (the fast lane)
#
# Steps, each skipped when its work is already done:
#   1. system packages  Slurm, munge, OpenMPI and iproute2 (the launch-path tests run real one- and two-node
#                       clusters) through `tools/cluster/local_slurm.sh install`, as root or with sudo
#   2. python packages  `pip install -e ".[test,bench]"` of this checkout (bench: PEFT, which the benchmark
#                       tests run for real), unless processes started anywhere
#                       already import this checkout's trainer with every pinned dependency satisfied;
#                       then DeepSpeed and Accelerate again, without dependencies, if their commands are
#                       missing from this Python's bin/ (a venv made with --system-site-packages)
#   3. tests            `python -m pytest -q tests` plus your arguments (a file or test id given: only those)
# SMOP_TEST_DRY_RUN=1 prints what steps 1-3 would run and runs none of them (tests/tools/test_test_script.py).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
export DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1
dry=${SMOP_TEST_DRY_RUN:-0}

# Run a step, or in a dry run only say what it would run.
step() {
    if [[ $dry == 1 ]]; then echo "would run: $*"; else "$@"; fi
}

# 1. System packages. One command per package local_slurm.sh installs (slurmctld, slurmd, slurm-client,
# munge, openmpi-bin, libopenmpi-dev, iproute2). The daemons live in /usr/sbin, which a non-root PATH lacks.
missing=()
for tool in slurmctld slurmd sbatch munged mpirun mpicc ip; do
    PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin" command -v "$tool" >/dev/null || missing+=("$tool")
done
if ((${#missing[@]})); then
    echo "test.sh: missing ${missing[*]}: installing the system packages"
    if [[ $(id -u) == 0 ]]; then
        step bash tools/cluster/local_slurm.sh install
    elif command -v sudo >/dev/null; then
        step sudo bash tools/cluster/local_slurm.sh install
    else
        echo "test.sh: error: ${missing[*]} missing and no root or sudo here;" \
             "as root run: bash $repo/tools/cluster/local_slurm.sh install" >&2
        exit 1
    fi
fi

# 2. Python packages. The tests start the trainer in fresh processes, which import `trainer` from wherever
# the environment points (an editable install, or PYTHONPATH): it must be this checkout, so the check runs
# from outside it. A reinstall costs 17-21 s even when nothing changed (measured on 2 busy cores: pip builds
# the editable wheel in a fresh build environment); this check, under a second. Any doubt (a missing package,
# Python < 3.11 without tomllib) means reinstall.
if ! (cd / && python - "$repo" <<'EOF'
import importlib.metadata as md, importlib.util, sys, tomllib
from pathlib import Path
from packaging.requirements import Requirement

repo = Path(sys.argv[1]).resolve()
spec = importlib.util.find_spec("trainer")
assert spec and Path(spec.origin).resolve() == repo / "trainer" / "__init__.py", "trainer is not this checkout"
project = tomllib.loads((repo / "pyproject.toml").read_text())["project"]
extras = project["optional-dependencies"]
for line in project["dependencies"] + extras["test"] + extras["bench"]:
    req = Requirement(line)
    assert req.specifier.contains(md.version(req.name), prereleases=True), f"{req.name} does not satisfy {req}"
EOF
) >/dev/null 2>&1; then
    echo "test.sh: installing this checkout and its pinned dependencies (pip install -e .[test,bench])"
    # DS_BUILD_OPS=0: DeepSpeed compiles no kernels (the CPU runs need none; a GPU machine JIT-builds them).
    step env DS_BUILD_OPS=0 python -m pip install -q -e ".[test,bench]"
fi

# 2b. The launchers the tests start by name must start this Python. In a virtual environment made with
# --system-site-packages (common on clusters whose PyTorch comes from a module), pip finds DeepSpeed and
# Accelerate installed outside it and writes no `deepspeed` or `accelerate` into the environment's bin/: the
# ones on PATH then start the ranks with the outer Python, which cannot import this checkout. Installing the
# pinned packages into the environment (no dependencies; a few seconds) puts their commands there.
missing_launchers() {  # prints their pins on one line and the bin/ they are missing from on the next
    cd / && python - "$repo" <<'EOF'
import os, sys, sysconfig, tomllib
from pathlib import Path

if sys.prefix == sys.base_prefix:  # not a venv: pip put the commands where it always does (or in ~/.local)
    sys.exit()
scripts = Path(sysconfig.get_path("scripts"))
pins = tomllib.loads((Path(sys.argv[1]) / "pyproject.toml").read_text())["project"]["dependencies"]
missing = [pin for pin in pins if (name := pin.split("==")[0]) in ("deepspeed", "accelerate")
           and not os.access(scripts / name, os.X_OK)]
if missing:
    print(" ".join(missing), scripts, sep="\n")
EOF
}
launchers=$(missing_launchers 2>/dev/null) || launchers=""
if [[ -n $launchers ]]; then
    { read -r pins; read -r scripts; } <<<"$launchers"
    echo "test.sh: no command of $pins in $scripts: installing them there"
    # shellcheck disable=SC2086  # one argument per pin
    step env DS_BUILD_OPS=0 python -m pip install -q --no-deps --force-reinstall $pins
fi

# 3. The tests; extra arguments (-m unit, -k NAME, -x, files or test ids) go to pytest. A file, folder or test id
# of tests/ given replaces the whole of tests/ (pytest would otherwise collect tests/ and run everything).
cmd=(python -m pytest -q tests "$@")
for arg in "$@"; do
    if [[ ($arg == tests/* || $arg == *.py || $arg == *::*) && -e ${arg%%::*} ]]; then cmd=(python -m pytest -q "$@"); fi
done
if [[ $dry == 1 ]]; then
    echo "would run: ${cmd[*]}"
    exit 0
fi
exec "${cmd[@]}"
