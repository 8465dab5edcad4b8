"""What the tools read back from a finished run directory, and how they rebuild its backbone.

A run directory holds config.yaml (the resolved run config), ds_config.json and tokenizer/. The 'tiny'
backbone is random and never saved: the trainer builds it after `torch.manual_seed(seed)` inside ZeRO-3
construction (zero.Init), whose initialisation draws different numbers from a plain build. To get the
trained-on weights back, `tiny_backbone` replays that construction in a one-rank process group and copies
the gathered weights into a plain module. Checkpoints (hub names, save_pretrained dirs) load directly.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from trainer.config import ModelConfig, RunConfig, load_config
from trainer.data.tokenizer import load_tokenizer
from trainer.models import build
from trainer.paths import model_location

# trainer.runtime.backbone and trainer.runtime.distributed import DeepSpeed; only the 'tiny' replay needs them, so they are
# imported there and a checkpoint backbone loads without DeepSpeed.


def read_run(run_dir) -> RunConfig:
    """The resolved config of the run in `run_dir` (its config.yaml)."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise ValueError(f"run_dir '{run_dir}': no config.yaml (is it a finished training run?)")
    return load_config(str(path), [])


def run_ds_config(run_dir) -> dict:
    path = Path(run_dir) / "ds_config.json"
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read the run's ds_config ({e})".splitlines()[0]) from None


def run_tokenizer(run_dir, cfg: RunConfig):
    """The tokenizer the run used: its saved copy, else the one its config names."""
    saved = Path(run_dir) / "tokenizer"
    if saved.is_dir():
        return load_tokenizer(str(saved))
    return load_tokenizer(cfg.model.tokenizer or cfg.model.name_or_path, cfg.model.trust_remote_code)


def backbone_config(cfg: RunConfig, vocab_size: int):
    """The run's backbone config without loading its weights (trainer/models/build.py)."""
    return build.backbone_config(cfg.model, vocab_size)


def load_backbone(name_or_path: str, dtype: torch.dtype = torch.float32, run_cfg: RunConfig | None = None,
                  ds_config: dict | None = None, vocab_size: int = 0) -> nn.Module:
    """A frozen backbone of either family on one device, no ZeRO: a checkpoint, or ('tiny') the run's random
    backbone."""
    if name_or_path != "tiny":
        model_cfg = ModelConfig(name_or_path=model_location(name_or_path, "--backbone"))
        try:
            return build.load(model_cfg, build.backbone_config(model_cfg, vocab_size), dtype).eval()
        except ValueError as e:
            raise ValueError(f"--backbone: {str(e).removeprefix('model.name_or_path: ')}") from None
    if run_cfg is None:
        raise ValueError("--backbone tiny needs --run_dir: a tiny backbone is rebuilt from its run's config and seed")
    return tiny_backbone(run_cfg, ds_config or {}, vocab_size, dtype)


def tiny_backbone(cfg: RunConfig, ds_config: dict, vocab_size: int, dtype: torch.dtype) -> nn.Module:
    """The run's random 'tiny' backbone, bit-identical to the one it trained on, as a plain module in `dtype`."""
    from trainer.runtime import distributed
    from trainer.runtime.backbone import build_backbone
    from trainer.runtime.ds_config import BatchLayout, merge_batch, param_dtype

    config = build.backbone_config(cfg.model, vocab_size)
    torch.manual_seed(cfg.seed)  # as build_model does right before build_backbone
    built = param_dtype(ds_config)  # initialise in the run's dtype: the random draws depend on it
    if not distributed.is_zero3(ds_config):
        return build_backbone(cfg.model, config, ds_config, built).to(dtype).eval()
    # Replay zero.Init in a world of one; gathering there is local, and the copy is an ordinary module.
    distributed.init()
    ds = merge_batch({k: v for k, v in ds_config.items() if k not in ("train_micro_batch_size_per_gpu",
                      "gradient_accumulation_steps", "train_batch_size")}, BatchLayout(1, 1, 1))
    try:
        sharded = build_backbone(cfg.model, config, ds, built)
        plain = build.load(cfg.model, config, built)  # the same class, plainly initialised, then overwritten
        with distributed.gathered(list(sharded.parameters())):
            plain.load_state_dict({k: v.detach().clone() for k, v in sharded.state_dict().items()})
    finally:
        distributed.destroy()
    plain.requires_grad_(False)
    return plain.to(dtype).eval()
