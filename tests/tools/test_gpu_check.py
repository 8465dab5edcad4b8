"""tools/gpu_check.sh --dry-run: every step the CPU can run, so the GPU check cannot rot before a GPU is at hand.

The wheel install is exercised with a small wheel written here (the real .whl/ is built on demand and not
in the checkout); the GPU tests are collected and skip; the default run trains 2 steps in bf16; the bench
arms that decide the speed goals run at tiny shapes, T5's and a causal LM's.
"""
import json
import subprocess
import zipfile

import pytest

from tests.launch import REPO

pytestmark = pytest.mark.multiprocess

ARMS = ["smop-4x5", "pt-100", "hf-peft-100", "bare", "smop-4x5-zero2"]
CAUSAL_ARMS = ["smop-4x5", "pt-100", "hf-peft-100"]


def small_wheel(directory) -> str:
    """A valid pure-Python wheel of one module, `gpucheck_probe`."""
    directory.mkdir()
    name = directory / "gpucheck_probe-0.1-py3-none-any.whl"
    info = "gpucheck_probe-0.1.dist-info"
    files = {"gpucheck_probe/__init__.py": "VALUE = 42\n",
             f"{info}/METADATA": "Metadata-Version: 2.1\nName: gpucheck-probe\nVersion: 0.1\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    files[f"{info}/RECORD"] = "".join(f"{f},,\n" for f in files) + f"{info}/RECORD,,\n"
    with zipfile.ZipFile(name, "w") as z:
        for path, text in files.items():
            z.writestr(path, text)
    return str(directory)


def test_dry_run_runs_every_cpu_step_and_reports(tmp_path):
    out = tmp_path / "out"
    # A generous budget: the dry run checks that every step works, not how fast a shared CPU runs it.
    cmd = ["bash", "tools/gpu_check.sh", "--dry-run", "--out", str(out), "--wheels", small_wheel(tmp_path / "whl"),
           "--budget-s", "1200"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["dry_run"] is True
    assert [(s["step"], s["status"]) for s in report["steps"]] == \
        [(name, "ok") for name in ("install", "env", "bench", "bench_causal", "tests", "train")]
    assert report["total_s"] <= report["budget_s"]
    # install: into raw/site, importable from there, the environment of the other steps untouched
    assert "installed 1 wheels" in report["install"][-1]
    probe = subprocess.run(["python3", "-c", "import gpucheck_probe; print(gpucheck_probe.VALUE)"], text=True,
                           capture_output=True, env={"PYTHONPATH": str(out / "raw" / "site")})
    assert probe.stdout.strip() == "42"
    assert report["env"]["cuda_available"] is False and report["env"]["versions"]["torch"]
    # the GPU tests: collected, every one skipped for want of CUDA
    tests = report["tests"]
    assert tests["tests"] >= 6 and tests["skipped"] == tests["tests"]
    assert all("CUDA" in c["message"] for c in tests["cases"])
    # the default run, bf16 backbone (the default ds_config with bf16 on), to its end
    train = report["train"]
    assert train["steps"] == 2 and train["backbone_dtype"] == "bfloat16" and train["adapter_written"]
    ds = json.loads((out / "raw" / "train_ds_config.json").read_text())
    assert ds["bf16"]["enabled"] is True
    # the arms, HF Trainer + PEFT included (the test command installs peft): every one measured
    arms = report["bench"]["arms"]
    assert list(arms) == ARMS and report["bench"]["baseline"] == "pt-100"
    for name in ARMS:
        assert arms[name]["status"] == "ok", (name, arms[name])
        assert arms[name]["ratios"]["samples_per_s"] == pytest.approx(
            arms[name]["samples_per_s"] / arms["pt-100"]["samples_per_s"])
    ratio = next(t for t in report["bench"]["targets"] if t["target"] == "pt-100 / hf-peft-100 samples/s")
    assert ratio["value"] == pytest.approx(arms["pt-100"]["samples_per_s"] / arms["hf-peft-100"]["samples_per_s"])
    assert {t["target"] for t in report["bench"]["targets"]} >= {"smop-4x5 / pt-100 samples/s", "smop-4x5 MFU"}
    # the same goals on a decoder-only LM (dry run: tiny-causal), its own pt-100 baseline, every arm measured
    causal = report["bench_causal"]
    assert report["causal_size"] == causal["size"] == "tiny-causal" and causal["baseline"] == "pt-100"
    assert list(causal["arms"]) == CAUSAL_ARMS
    for name, arm in causal["arms"].items():
        assert arm["status"] == "ok", (name, arm)
        assert arm["ratios"]["samples_per_s"] == pytest.approx(
            arm["samples_per_s"] / causal["arms"]["pt-100"]["samples_per_s"])
    assert causal["arms"]["hf-peft-100"]["trainable_params"] == causal["arms"]["pt-100"]["trainable_params"] == 100 * 128
    flops = next(t for t in causal["targets"] if t["target"] == "smop-4x5 / pt-100 inference FLOPs")
    assert flops["value"] == pytest.approx(causal["arms"]["smop-4x5"]["inference_flops_per_example"]
                                           / causal["arms"]["pt-100"]["inference_flops_per_example"]) and flops["value"] < 1
    # the printed table, also written to gpu_check.txt, and the packed logs
    table = (out / "gpu_check.txt").read_text()
    assert table in proc.stdout
    for word in ("gpu_check --dry-run", "bench tiny |", "bench tiny-causal |", "bench_causal", *ARMS, "targets"):
        assert word in table, word
    causal_rows = table.split("bench tiny-causal |")[1].split("targets")[0]
    for name in CAUSAL_ARMS:
        assert f"\n{name} " in causal_rows and f"{name:<24} ok " in causal_rows, name
    assert (out / "logs.tar.gz").stat().st_size > 0


@pytest.mark.parametrize("args, message", [
    (["--frobnicate"], "unknown argument '--frobnicate'"),
    (["--budget-s", "soon"], "--budget-s 'soon' is not a whole number"),
])
def test_bad_arguments_fail_in_one_line(tmp_path, args, message):
    proc = subprocess.run(["bash", "tools/gpu_check.sh", "--out", str(tmp_path), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr
