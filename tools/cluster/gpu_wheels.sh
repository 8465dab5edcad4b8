#!/usr/bin/env bash
# Fill .whl/ (at the checkout's root; ignored by git) with the wheels a GPU machine's image may lack, so that
# tools/gpu_check.sh can install them there without a network: DeepSpeed (built here as a pure-Python wheel:
# its ops compile at run time on the GPU machine) and the few packages it needs that such images often do not
# ship (hjson, pydantic and its parts; datasets and its own small dependencies).
#
#   bash tools/cluster/gpu_wheels.sh          # PYTHON_VERSION=3.12 PLATFORM=manylinux_2_28_x86_64 by default
#
# Run it on a machine with a package index, before copying the checkout (with .whl/) to the GPU machine.
# gpu_check.sh then runs: python3 -m pip install --no-index --no-deps --target /tmp/site .whl/*.whl
# GPU_WHEELS_DRY_RUN=1 prints the commands instead of running them (tests/tools/test_gpu_wheels.py).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
run() { if [[ ${GPU_WHEELS_DRY_RUN:-0} == 1 ]]; then echo "would run: $*"; else "$@"; fi; }
run mkdir -p .whl
python_version=${PYTHON_VERSION:-3.12}
ds=${DEEPSPEED_VERSION:-$(python3 -c 'from importlib.metadata import version; print(version("deepspeed"))' 2>/dev/null || echo 0.19.8)}
# DeepSpeed publishes a source archive only; building it here gives a pure-Python wheel.
run env DS_BUILD_OPS=0 python3 -m pip wheel -q --no-deps -w .whl "deepspeed==$ds"
platforms=(--platform "${PLATFORM:-manylinux_2_28_x86_64}" --platform manylinux_2_27_x86_64
           --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
for pkg in hjson pydantic pydantic-core annotated-types typing-inspection datasets dill multiprocess xxhash; do
  run python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$python_version" --implementation cp \
    "${platforms[@]}" -d .whl "$pkg"
done
run ls -la .whl
