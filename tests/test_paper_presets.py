"""The paper presets: they load, say how to launch them, and hold the SMoP paper's setting.

(tests/test_config.py already validates every preset under configs/; these check what the paper fixes.)
"""
import re
import shlex

import pytest
import torch

from trainer.cli.count import config as t5_config
from trainer.config import EvalMode, OptimizerName, Schedule, Splits, flatten, load_config, to_dict
from trainer.paths import REPO_ROOT
from trainer.data.tasks import TASKS
from trainer.methods.registry import registered
from trainer.methods.router import RouterInit, RouterInput
from trainer.optim import build_scheduler

PRESETS = sorted((REPO_ROOT / "configs" / "paper").glob("*.yaml"))
DS_CONFIGS = {"google/t5-large-lm-adapt": "ds_configs/t5_large_zero3_bf16.json",
              "google/t5-xl-lm-adapt": "ds_configs/t5_xl_zero3_bf16.json"}
MODELS = {"google/t5-large-lm-adapt": "t5-large", "google/t5-xl-lm-adapt": "t5-xl"}  # trainer/cli/count.py's shapes


def test_one_preset_per_model_and_method():
    assert [p.name for p in PRESETS] == [f"{m}_{k}.yaml" for m in ("t5-large-lm-adapt", "t5-xl-lm-adapt")
                                         for k in ("prompt_tuning", "smop")]


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.name)
def test_launch_command_in_the_header_runs_this_preset(path):
    words = shlex.split(path.read_text().splitlines()[0].removeprefix("#"))
    assert words[:4] == ["deepspeed", "--num_gpus", "8", "trainer/main.py"]
    assert words[4:6] == ["--config", str(path.relative_to(REPO_ROOT))]
    cfg = load_config(str(path), words[6:])
    assert cfg.data.task == "rte" and cfg.output_dir.endswith("/rte")


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.name)
def test_paper_setting(path):
    cfg = load_config(str(path), [])
    t, d, p = cfg.train, cfg.data, cfg.prompt
    assert cfg.ds_config == DS_CONFIGS[cfg.model.name_or_path]
    assert (REPO_ROOT / cfg.ds_config).is_file()
    assert (t.optimizer, t.lr, t.warmup_ratio, t.schedule, t.global_batch_size, t.weight_decay) == \
           (OptimizerName.ADAFACTOR, 0.3, 0.06, Schedule.LINEAR, 32, 1e-5)
    assert 32 % t.micro_batch_size == 0
    assert (d.splits, d.dev_fraction, d.max_source_length) == (Splits.PAPER, 0.1, 512)
    assert cfg.eval.mode == EvalMode.GENERATE
    if p.method == "smop":
        assert (p.num_prompts, p.prompt_length) == (4, 5)
        # the paper's router, not the trainer's default: raw input, orthogonal rows, one learning rate
        assert (p.router_input, p.router_init, t.router_lr) == (RouterInput.RAW, RouterInit.ORTHOGONAL, 0.0)
    else:
        assert p.num_prompts == 1
        shape = t5_config(MODELS[cfg.model.name_or_path])
        for length in (5, 20, 50, 100):  # the paper's prompt-tuning grid
            grid = load_config(str(path), [f"prompt.prompt_length={length}"])
            # The point changes the prompt length and nothing else of the preset ...
            assert changed(cfg, grid) <= {"prompt.prompt_length"}
            # ... and the trainer builds Lester et al.'s l x d prompt and no router for it.
            with torch.device("meta"):  # shapes only
                module = registered()[grid.prompt.method].build(grid.prompt, shape)
            assert sum(q.numel() for q in module.parameters()) == length * shape.d_model


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.name)
def test_step_table_covers_every_superglue_task(path):
    table = next(line for line in path.read_text().splitlines() if "boolq" in line and "|" in line)
    steps = dict(re.findall(r"(\w+) (\d+)", table))
    assert sorted(steps) == sorted(name for name in TASKS if name != "jsonl")
    # The launch command in the header runs its task for the table's number of steps.
    header = dict(w.split("=", 1) for w in shlex.split(path.read_text().splitlines()[0]) if "=" in w)
    assert int(header["train.max_steps"]) == int(steps[header["data.task"]])
    preset = load_config(str(path), [])
    for task, n in steps.items():
        cfg = load_config(str(path), [f"data.task={task}", f"train.max_steps={n}"])
        assert changed(preset, cfg) <= {"data.task", "train.max_steps"}
        # The schedule the trainer builds for that many steps warms up (the first step runs below the peak
        # learning rate), reaches the peak, and has decayed to zero at the last step.
        optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        factor = build_scheduler(optimizer, cfg.train).lr_lambdas[0]
        factors = [factor(s) for s in range(int(n) + 1)]
        assert factors[0] < 1 and max(factors) == 1 and factors[-1] == 0, (task, n)


def changed(a, b) -> set[str]:
    """Dotted keys whose resolved values differ between two configs."""
    left, right = dict(flatten(to_dict(a))), dict(flatten(to_dict(b)))
    return {key for key in left if left[key] != right[key]}
