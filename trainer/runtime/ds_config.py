"""The DeepSpeed JSON: read, checked against the run config, and given the batch sizes.

Batch-size arithmetic has one owner, `resolve_batch` (a `BatchLayout`): global = micro x accumulation x world size. The
shipped ds_configs leave the three batch keys out; a ds_config that sets one must agree with the run config.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from trainer.config import TrainConfig

BATCH_KEYS = ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "train_batch_size")


def load_ds_config(path: str) -> dict:
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ValueError(f"ds_config: cannot read '{path}' ({e.strerror})") from None
    try:
        ds = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(ds, dict):
        raise ValueError(f"{path}: a ds_config must be a JSON object")
    for key, value in _walk(ds):
        if value == "auto":
            raise ValueError(f"{path}: {key} is \"auto\"; raw DeepSpeed needs a number (see ds_configs/README.md)")
    if ds.get("fp16", {}).get("enabled"):
        raise ValueError(f"{path}: fp16.enabled is true; T5 overflows in fp16, use bf16")
    return ds


@dataclass(frozen=True)
class BatchLayout:
    """How the global batch of one optimiser step is split: micro batch x accumulation x world size."""

    micro: int
    """Examples per rank per forward."""
    accum: int
    """Micro batches per rank per optimiser step."""
    world: int
    """Ranks."""

    @property
    def global_batch(self) -> int:
        return self.micro * self.accum * self.world


def resolve_batch(cfg: TrainConfig, world_size: int) -> BatchLayout:
    """The batch layout of `cfg` (the run config's train section) on `world_size` ranks."""
    micro = cfg.micro_batch_size
    if cfg.global_batch_size:
        per_step = micro * world_size
        if cfg.global_batch_size % per_step:
            raise ValueError(f"train.global_batch_size={cfg.global_batch_size} is not a multiple of "
                             f"train.micro_batch_size x world size = {micro} x {world_size}")
        return BatchLayout(micro, cfg.global_batch_size // per_step, world_size)
    return BatchLayout(micro, cfg.grad_accum_steps, world_size)


def merge_batch(ds: dict, layout: BatchLayout, path: str = "ds_config") -> dict:
    """A copy of `ds` with the batch keys set from `layout`; a key already there must agree."""
    merged = dict(ds)
    for key, value in zip(BATCH_KEYS, (layout.micro, layout.accum, layout.global_batch)):
        if key in ds and ds[key] != value:
            raise ValueError(f"{path}: {key}={ds[key]} contradicts the run config, which gives {value} "
                             f"(remove it from the ds_config or change train.*)")
        merged[key] = value
    return merged


def param_dtype(ds: dict) -> torch.dtype:
    return torch.bfloat16 if ds.get("bf16", {}).get("enabled") else torch.float32


def _walk(tree: dict, prefix: str = ""):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _walk(value, f"{prefix}{key}.")
        else:
            yield prefix + key, value
