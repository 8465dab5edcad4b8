"""What a run writes beside its outputs so that it can be reproduced from them: the resolved config, the
ds_config actually used, the git revision, the world size and hosts, the Slurm job id, library versions,
and the tokenizer."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
import yaml

from trainer.config import RunConfig, to_dict

from trainer.paths import REPO_ROOT
from trainer.runtime import distributed


def write_run_files(cfg: RunConfig, ds_config: dict, dist, backbone, tokenizer) -> None:
    """config.yaml, ds_config.json, run_info.json and tokenizer/ in cfg.output_dir (rank 0 calls it)."""
    out = Path(cfg.output_dir)
    (out / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    (out / "ds_config.json").write_text(json.dumps(ds_config, indent=2) + "\n")
    params = list(backbone.parameters())
    info = {"git_revision": git_revision(), "world_size": dist.world_size, "hosts": list(dist.hosts),
            "command": sys.argv,
            "backbone_dtype": str(params[0].dtype).removeprefix("torch."),
            "activation_checkpointing": bool(getattr(backbone, "is_gradient_checkpointing", False)),
            "backbone_params": sum(distributed.numel(p) for p in params),
            "backbone_params_on_rank0": sum(distributed.local_numel(p) for p in params),
            "slurm_job_id": os.environ.get("SLURM_JOB_ID"), "torch": torch.__version__,
            "deepspeed": __import__("deepspeed").__version__, "transformers": __import__("transformers").__version__}
    (out / "run_info.json").write_text(json.dumps(info, indent=2) + "\n")
    tokenizer.save_pretrained(str(out / "tokenizer"))


def git_revision() -> str | None:
    """The checkout's commit, recorded beside a run's outputs; None outside a git checkout."""
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip() or None
    except OSError:
        return None
