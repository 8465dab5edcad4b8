"""Every way a user starts the trainer, with real processes on the CPU: 2 ranks, the tiny model.

`deepspeed --num_gpus 2` is tests/test_end_to_end.py::test_deepspeed_launcher_two_ranks_writes_the_run_files;
the module forms (`torchrun -m trainer.main`, `deepspeed --module trainer`, `python -m trainer`) run the package
found on the path instead of a file;
Slurm (sbatch of the shipped template, srun one task per rank) is tests/test_slurm_templates.py.
"""
import json

import pytest

from tests.launch import events, run_trainer

pytestmark = pytest.mark.multiprocess


@pytest.mark.parametrize("launcher", ["torchrun", "deepspeed-hostfile", "deepspeed-no-ssh", "mpirun", "accelerate",
                                      "torchrun-module", "deepspeed-module"])
def test_launcher_starts_a_world_of_two(tmp_path, launcher):
    proc = run_trainer(tmp_path, nproc=2, launcher=launcher)
    info = json.loads((tmp_path / "run_info.json").read_text())
    assert info["world_size"] == 2, proc.stdout[-2000:]
    assert "world 2 | batch 4 x accum 1 x world 2 = 8" in proc.stdout
    assert [e["step"] for e in events(tmp_path, "train")] == [1, 2, 3, 4]
    assert events(tmp_path, "eval")[-1]["num_examples"] == 16


def test_python_module_trains_one_rank(tmp_path):
    proc = run_trainer(tmp_path, launcher="python-module")
    assert json.loads((tmp_path / "run_info.json").read_text())["world_size"] == 1, proc.stdout[-2000:]
    assert [e["step"] for e in events(tmp_path, "train")] == [1, 2, 3, 4]
    assert (tmp_path / "adapter" / "adapter_config.json").exists(), sorted(p.name for p in tmp_path.iterdir())
