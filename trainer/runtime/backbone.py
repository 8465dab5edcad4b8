"""The backbone built or loaded straight into ZeRO-3 partitions (trainer/models/build.py does the building).

Under ZeRO-3 the model is built inside `zero3_construction`, so its weights go straight into partitions and
no rank ever materialises the whole backbone; below stage 3 it is built whole and replicated later.
"""
from __future__ import annotations

import torch
from torch import nn

from trainer.models.build import load
from trainer.runtime.distributed import zero3_construction


def build_backbone(cfg, config, ds_config: dict, dtype: torch.dtype) -> nn.Module:
    """The frozen backbone of `config` in `dtype` (trainer/models/build.py `load`), constructed into ZeRO-3
    partitions when `ds_config` (the merged DeepSpeed config) says stage 3.

    cfg: the run config's model section; config: the backbone's config (`backbone_config`)."""
    with zero3_construction(ds_config):
        return load(cfg, config, dtype)
