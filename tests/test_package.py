"""The installable package: a wheel built from this checkout carries the presets, ds_configs and embedded assets,
declares the console scripts, and trains from any directory once installed; every command answers --help;
the layout rules hold (no sys.path edits in trainer/ or tools/, trainer/ never imports tools/)."""
import ast
import configparser
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from tests.launch import REPO

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
# Each console script, the module `python -m` runs for it, and an option its --help must name.
COMMANDS = {"smop-train": ("trainer", "--config"), "smop-predict": ("trainer.cli.predict", "--backbone"),
            "smop-evaluate": ("trainer.cli.evaluate", "--predictions"), "smop-export": ("trainer.cli.export", "--run_dir"),
            "smop-count": ("trainer.cli.count", "--source-lens"), "smop-plan": ("trainer.cli.plan", "--gpu-mem"),
            "smop-plot": ("trainer.cli.plot", "RUN_DIR")}


def run(cmd, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, **kwargs)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} exited {proc.returncode}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(wheel, site): the wheel of this checkout and the directory it is installed into. Offline (no build
    isolation, no dependencies) and from a copy of what the package is made of, since setuptools builds in
    the source tree; the editable install is not touched."""
    tmp = tmp_path_factory.mktemp("package")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", PYPROJECT["project"]["readme"]):
        shutil.copy(REPO / name, src / name)
    folders = {"trainer"} | {d for d in PYPROJECT["tool"]["setuptools"]["package-dir"].values() if d != "."}
    for name in folders:
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
         "-w", str(tmp / "dist"), str(src)])
    (wheel,) = (tmp / "dist").glob("smop_trainer-*.whl")
    run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", str(tmp / "site"),
         str(wheel)])
    return wheel, tmp / "site"


@pytest.mark.multiprocess
def test_wheel_carries_presets_ds_configs_assets_and_console_scripts(installed):
    wheel, _ = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {f"trainer/{p.relative_to(REPO / 'trainer')}" for p in (REPO / "trainer" / "assets").rglob("*")
               if p.is_file()}
    shipped |= {f"trainer/configs/{p.relative_to(REPO / 'configs')}" for p in (REPO / "configs").rglob("*.yaml")}
    shipped |= {f"trainer/ds_configs/{p.name}" for p in (REPO / "ds_configs").glob("*.json")}
    assert {"trainer/assets/tiny-pretrained/model.safetensors", "trainer/assets/data/RTE/train.jsonl",
            "trainer/configs/tiny.yaml", "trainer/ds_configs/cpu_zero3.json"} <= shipped
    assert shipped - names == set()
    assert not [n for n in names if n.startswith(("tools/", "tests/"))]  # dev scripts and tests stay out
    (info,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    entry_points = configparser.ConfigParser()
    entry_points.read_string(zipfile.ZipFile(wheel).read(info).decode())
    assert dict(entry_points["console_scripts"]) == PYPROJECT["project"]["scripts"]
    assert set(PYPROJECT["project"]["scripts"]) == set(COMMANDS)


@pytest.mark.multiprocess
def test_installed_package_resolves_shipped_files_and_trains_from_any_directory(installed, tmp_path):
    _, site = installed
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1"}  # the checkout is not on the path
    probe = ("import json, trainer\n"
             "from trainer.config import load_config\n"
             "from trainer.paths import EMBEDDED_DATA_DIR, model_location, shipped_path\n"
             "cfg = load_config('configs/tiny.yaml', [])\n"
             "print(json.dumps({'package': trainer.__file__, 'ds_config': shipped_path(cfg.ds_config),\n"
             "    'preset': shipped_path('configs/tiny.yaml'), 'paper': shipped_path('configs/paper'),\n"
             "    'data': str(EMBEDDED_DATA_DIR), 'model': model_location('tiny-pretrained')}))\n")
    found = json.loads(run([sys.executable, "-c", probe], cwd=tmp_path, env=env).stdout.splitlines()[-1])
    for key, path in found.items():
        assert Path(path).is_relative_to(site) and Path(path).exists(), (key, path)
    assert (Path(found["model"]) / "model.safetensors").exists()
    # The embedded default (the shipped pretrained model, the embedded mixture, the default ds_config), briefly.
    out = tmp_path / "run"
    proc = run([sys.executable, "-m", "trainer", "train.max_steps=2", "train.eval_every=0",
                "data.max_eval_examples=8", "monitor.plots=false", f"output_dir={out}"], cwd=tmp_path, env=env)
    assert json.loads((out / "run_info.json").read_text())["world_size"] == 1, proc.stdout[-2000:]
    assert (out / "adapter" / "adapter_config.json").exists()


HELP_PROBE = """
import contextlib, importlib, io, json, runpy, sys
commands, found = json.loads(sys.argv[1]), {}
def answer(label, call):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            call()
            code = None
        except SystemExit as e:
            code = e.code
    found[label] = [code, out.getvalue()]
for script, (target, module) in commands.items():
    name, attr = target.split(":")
    sys.argv = [script, "--help"]  # what the console script's wrapper does: sys.exit(module.attr())
    answer(script, getattr(importlib.import_module(name), attr))
    sys.argv = [module, "--help"]  # python -m module --help
    answer(f"python -m {module}", lambda: runpy.run_module(module, run_name="__main__", alter_sys=True))
print(json.dumps(found))
"""


@pytest.mark.multiprocess
def test_every_command_answers_help():
    """Each console script's entry point and each `python -m` form (`python -m trainer` among them), all in one
    process: they spend their seconds importing torch and DeepSpeed. The installed `smop-train`, when on PATH,
    runs for real beside it."""
    commands = {s: (PYPROJECT["project"]["scripts"][s], module) for s, (module, _) in COMMANDS.items()}
    script = shutil.which("smop-train")
    installed = script and subprocess.Popen([script, "--help"], cwd=REPO, stdout=subprocess.PIPE, text=True)
    found = json.loads(run([sys.executable, "-c", HELP_PROBE, json.dumps(commands)], cwd=REPO).stdout.splitlines()[-1])
    for script, (module, option) in COMMANDS.items():
        for label in (script, f"python -m {module}"):
            code, text = found[label]
            assert code in (0, None) and "usage:" in text and option in text, (label, code, text[-1000:])
    if installed:
        assert installed.wait(timeout=300) == 0 and "--config" in installed.stdout.read()


def test_no_sys_path_edits_and_trainer_never_imports_tools():
    sources = [*REPO.glob("trainer/**/*.py"), *REPO.glob("tools/**/*.py")]
    edits = [f"{p.relative_to(REPO)}:{n}" for p in sources for n, line in enumerate(p.read_text().splitlines(), 1)
             if re.search(r"sys\.path\.(insert|append|extend)|sys\.path\s*\+?=", line)]
    assert edits == [], "tools run as `python -m tools.NAME` from the repository root; trainer/ is a package"
    imports = []
    for path in REPO.glob("trainer/**/*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            imports += [f"{path.relative_to(REPO)}: {n}" for n in names if n.split(".")[0] == "tools"]
    assert imports == [], "trainer/ never imports tools/"
