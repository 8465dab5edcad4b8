"""The trainer writes an adapter at the end of a run; smop-export (trainer/cli/export.py) writes the same one from
the run dir."""
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.launch import run_trainer
from trainer.inference.adapter import WEIGHTS, load_adapter
from trainer.cli.run_files import backbone_config, read_run, run_tokenizer
from tests.launch import REPO as ROOT

pytestmark = pytest.mark.multiprocess



@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    run_trainer(out, "train.max_steps=2")
    return out


def export(*args, cwd):
    return subprocess.run([sys.executable, "-m", "trainer.cli.export", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, timeout=120,
                          env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})


def test_trainer_writes_a_loadable_adapter_matching_the_final_weights(run_dir):
    adapter = run_dir / "adapter"
    cfg = read_run(run_dir)
    smop = load_adapter(adapter, backbone_config(cfg, len(run_tokenizer(run_dir, cfg))))
    final = load_file(run_dir / "method_final.safetensors")
    assert set(final) == set(smop.state_dict())
    for name, value in final.items():
        assert torch.equal(smop.state_dict()[name], value)
    assert (adapter / "tokenizer").is_dir()  # the tiny run trained its own tokenizer: the adapter carries it


def test_export_reproduces_the_trainers_adapter(run_dir, tmp_path):
    proc = export("--run_dir", run_dir, "--out", tmp_path / "a", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for name in ("adapter.safetensors", "adapter_config.json"):
        assert (tmp_path / "a" / name).read_bytes() == (run_dir / "adapter" / name).read_bytes()


def test_export_from_a_checkpoint_file_or_folder(run_dir, tmp_path):
    tensors = {k: v * 2 for k, v in load_file(run_dir / "method_final.safetensors").items()}
    ckpt = tmp_path / "checkpoints" / "step-000001"
    ckpt.mkdir(parents=True)
    save_file(tensors, ckpt / "method.safetensors")
    for source in (ckpt, ckpt / "method.safetensors"):
        proc = export("--run_dir", run_dir, "--checkpoint", source, "--out", tmp_path / "b", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert torch.equal(load_file(tmp_path / "b" / WEIGHTS)["prompts"], tensors["prompts"])


def test_export_reads_a_run_from_before_the_rename(run_dir, tmp_path):
    """Runs written before method_final.safetensors was named for what it holds have smop_final.safetensors."""
    old = tmp_path / "old-run"
    shutil.copytree(run_dir, old)
    (old / "method_final.safetensors").rename(old / "smop_final.safetensors")
    proc = export("--run_dir", old, "--out", tmp_path / "d", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "d" / WEIGHTS).read_bytes() == (run_dir / "adapter" / WEIGHTS).read_bytes()


def test_export_bad_input_is_one_line_exit_2(run_dir, tmp_path):
    proc = export("--run_dir", tmp_path / "nothing", cwd=tmp_path)
    assert proc.returncode == 2 and "no config.yaml" in proc.stderr and proc.stderr.count("\n") == 1
    bad = tmp_path / "bad.safetensors"
    tensors = load_file(run_dir / "method_final.safetensors")
    tensors["prompts"][0, 0, 0] = float("nan")
    save_file(tensors, bad)
    proc = export("--run_dir", run_dir, "--checkpoint", bad, "--out", tmp_path / "c", cwd=tmp_path)
    assert proc.returncode == 2 and "non-finite" in proc.stderr and not (tmp_path / "c").exists()
