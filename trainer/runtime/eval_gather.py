"""Evaluate with the ZeRO-3 backbone gathered once, not at every forward and decoding step.

Under ZeRO-3 every module call gathers its weights from all ranks and releases them after, so greedy
decoding of n tokens gathers the whole decoder n times (docs/benchmarks.md: 6.5x the replicated path's
latency on 2 CPU ranks). When the whole backbone fits on each device next to what is already there, we
gather it once for the whole evaluation (`distributed.whole_backbone`) and partition it again after.
The decision is taken on every rank and must agree, since gathering is collective.
"""
from __future__ import annotations

import contextlib

from trainer.perf.plan import whole_backbone_fits
from trainer.runtime import distributed
from trainer.runtime.hardware import device_memory, memory_in_use


def gather_wanted(backbone, device, local_ranks: int, force: bool | None) -> bool:
    """Whether to gather: `force` if given, else whether the whole backbone fits on every rank's device."""
    params = list(backbone.parameters())
    if not any(distributed.is_partitioned(p) for p in params):
        return False  # nothing to gather: stage < 3 or the full fine-tuning engine's replicated case
    if force is not None:
        return force
    total = sum(distributed.numel(p) for p in params)
    fits = whole_backbone_fits(total, params[0].element_size(), device_memory(device, local_ranks),
                               memory_in_use(device))
    return distributed.all_agree(fits, device)


@contextlib.contextmanager
def maybe_whole_backbone(backbone, device, local_ranks: int, force: bool | None):
    """The backbone whole on every rank inside the block when `gather_wanted`; else as it was. Yields
    whether it was gathered."""
    if gather_wanted(backbone, device, local_ranks, force):
        with distributed.whole_backbone(backbone):
            yield True
    else:
        yield False
