"""tools/test.sh, the README's one test command, in its dry run (SMOP_TEST_DRY_RUN=1: it prints the steps it
would run). It runs in a copy of the checkout's script and pyproject.toml beside a stand-in `trainer`
package, with PATH holding only stand-ins, so each decision is driven from here: which tools exist, who
runs it, where `trainer` resolves, which pins hold, which launchers the Python's environment has (`python` is
a virtual environment made here with --system-site-packages)."""
import shutil
import subprocess
import sys
import tomllib
import venv
from pathlib import Path

import pytest
from tests.launch import REPO

pytestmark = pytest.mark.multiprocess

TOOLS = ("slurmctld", "slurmd", "sbatch", "munged", "mpirun", "mpicc", "ip")
INSTALL = "bash tools/cluster/local_slurm.sh install"
PIP = "would run: env DS_BUILD_OPS=0 python -m pip install -q -e .[test,bench]"
LAUNCHERS = "would run: env DS_BUILD_OPS=0 python -m pip install -q --no-deps --force-reinstall {}"


def executable(path: Path, body: str) -> None:
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)


@pytest.fixture
def checkout(tmp_path) -> Path:
    """A checkout with this repository's tools/test.sh and pyproject.toml and an empty trainer package."""
    repo = tmp_path / "repo"
    (repo / "tools").mkdir(parents=True)
    (repo / "trainer").mkdir()
    (repo / "trainer" / "__init__.py").write_text("")
    shutil.copy(REPO / "tools" / "test.sh", repo / "tools" / "test.sh")
    shutil.copy(REPO / "pyproject.toml", repo / "pyproject.toml")
    return repo


def dry_run(repo: Path, tools=TOOLS, uid=0, sudo=False, pythonpath=None, args=(),
            launchers=("deepspeed", "accelerate")) -> subprocess.CompletedProcess:
    """tools/test.sh --dry-run with only `tools` (and sudo if asked) on PATH, `id -u` printing `uid`, and
    `python` a virtual environment that sees this one's packages and has the commands `launchers` in its bin/."""
    env_dir = repo.parent / "venv"
    if not env_dir.exists():
        venv.create(env_dir, system_site_packages=True)
    for name in ("deepspeed", "accelerate"):
        (env_dir / "bin" / name).unlink(missing_ok=True)
    for name in launchers:
        executable(env_dir / "bin" / name, "exit 0")
    bin_dir = repo.parent / "bin"
    shutil.rmtree(bin_dir, ignore_errors=True)
    bin_dir.mkdir()
    executable(bin_dir / "python", f'exec {env_dir / "bin" / "python"} "$@"')
    executable(bin_dir / "dirname", f'exec {shutil.which("dirname")} "$@"')
    executable(bin_dir / "id", f"echo {uid}")
    for name in [*tools, *(["sudo"] if sudo else [])]:
        executable(bin_dir / name, "exit 0")
    env = {"PATH": str(bin_dir), "SMOP_TEST_DRY_RUN": "1", "PYTHONPATH": str(pythonpath or repo)}
    return subprocess.run(["/bin/bash", str(repo / "tools" / "test.sh"), *args], env=env, capture_output=True,
                          text=True, timeout=60)


def test_everything_present_goes_straight_to_pytest_with_the_arguments(checkout):
    proc = dry_run(checkout, args=("-m", "unit", "-x"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["would run: python -m pytest -q tests -m unit -x"]


def test_a_file_or_test_id_runs_only_that_and_options_keep_the_whole_suite(checkout):
    (checkout / "tests").mkdir()
    (checkout / "tests" / "test_x.py").write_text("def test_a(): pass\n")
    def runs(*args):
        return dry_run(checkout, args=args).stdout.splitlines()[-1]
    assert runs("tests/test_x.py::test_a", "-x") == "would run: python -m pytest -q tests/test_x.py::test_a -x"
    assert runs("tests/test_x.py") == "would run: python -m pytest -q tests/test_x.py"
    assert runs("-k", "tests") == "would run: python -m pytest -q tests -k tests"  # a keyword, not the folder


def test_a_missing_tool_installs_the_system_packages(checkout):
    proc = dry_run(checkout, tools=[t for t in TOOLS if t != "mpicc"])
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("test.sh: missing ") and "mpicc" in lines[0].split(":")[1]
    assert lines[1:] == [f"would run: {INSTALL}", "would run: python -m pytest -q tests"]


def test_without_root_it_uses_sudo_or_says_what_to_run(checkout):
    with_sudo = dry_run(checkout, tools=(), uid=1000, sudo=True)
    assert f"would run: sudo {INSTALL}" in with_sudo.stdout.splitlines()
    neither = dry_run(checkout, tools=(), uid=1000)
    assert neither.returncode == 1 and "would run" not in neither.stdout
    assert neither.stderr.count("\n") == 1
    assert f"no root or sudo here; as root run: bash {checkout}/tools/cluster/local_slurm.sh install" in neither.stderr


def test_reinstalls_when_trainer_is_another_checkout_or_a_pin_does_not_hold(checkout, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "trainer").mkdir(parents=True)
    (elsewhere / "trainer" / "__init__.py").write_text("")
    assert PIP in dry_run(checkout, pythonpath=elsewhere).stdout.splitlines()
    pyproject = checkout / "pyproject.toml"
    assert '"torch==' in pyproject.read_text()
    pyproject.write_text(pyproject.read_text().replace('"torch==', '"torch==0.0.1,!='))
    assert PIP in dry_run(checkout).stdout.splitlines()
    # and the checkout as shipped, with trainer resolving to it, needs no install (the first test above)
    pyproject.write_text((REPO / "pyproject.toml").read_text())
    assert PIP not in dry_run(checkout).stdout.splitlines()


def test_launchers_missing_from_the_environment_are_installed_into_it(checkout):
    """A venv made with --system-site-packages gets no `deepspeed` or `accelerate` of its own from pip: the outer
    ones would start the ranks with a Python that cannot import this checkout."""
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = {pin.split("==")[0]: pin for pin in dependencies}
    scripts = checkout.parent / "venv" / "bin"
    neither = dry_run(checkout, launchers=())
    assert neither.returncode == 0, neither.stderr
    both = f"{pins['deepspeed']} {pins['accelerate']}"
    assert neither.stdout.splitlines() == [f"test.sh: no command of {both} in {scripts}: installing them there",
                                           LAUNCHERS.format(both), "would run: python -m pytest -q tests"]
    one = dry_run(checkout, launchers=("deepspeed",))
    assert LAUNCHERS.format(pins["accelerate"]) in one.stdout.splitlines()
    assert PIP not in one.stdout.splitlines()  # trainer and every pin are there: only the launcher is missing
    # the README's line for users in such an environment names the same pins
    assert f"--force-reinstall {both}`" in " ".join((REPO / "README.md").read_text().split())


def test_the_readme_and_ci_run_this_script():
    readme = (REPO / "README.md").read_text()
    assert "bash tools/test.sh" in readme and "python -m pytest -q tests" not in readme
    ci = [line for line in (REPO / ".ci" / "run").read_text().splitlines() if line and not line.startswith("#")]
    assert ci[-1] == "bash tools/test.sh"
