"""Evaluate with the ZeRO-3 backbone gathered once, not at every forward and decoding step.

Under ZeRO-3 every module call gathers its weights from all ranks and releases them after, so greedy
decoding of n tokens gathers the whole decoder n times (docs/benchmarks.md: 6.5x the replicated path's
latency on 2 CPU ranks). When the whole backbone fits on each device next to what is already there, we
gather it once for the whole evaluation (`distributed.whole_backbone`) and partition it again after.
The decision is taken on every rank and must agree, since gathering is collective.
"""
from __future__ import annotations

import contextlib
import functools

from trainer.runtime import distributed
from trainer.runtime.placement_plan import device_memory, memory_in_use, whole_backbone_fits


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
    """The backbone whole on every rank inside the block when `gather_wanted`; else as it was."""
    if gather_wanted(backbone, device, local_ranks, force):
        with distributed.whole_backbone(backbone):
            yield True
    else:
        yield False


def gathered_for_evaluation(evaluate):
    """Decorates `evaluate(run, ...)`: the whole evaluation runs inside `maybe_whole_backbone`."""
    @functools.wraps(evaluate)
    def wrapper(run, *args, **kwargs):
        # Full fine-tuning's backbone is the training engine: left to gather per module as before.
        force = run.cfg.eval.gather_backbone if not run.update.trains_backbone else False
        with maybe_whole_backbone(run.model.backbone, run.dist.device, local_ranks(run.dist.world_size),
                                  force) as gathered:
            event = evaluate(run, *args, **kwargs)
        run.monitor.log({"event": "eval_gather", "step": run.step, "backbone_gathered": gathered})
        return event
    return wrapper


def local_ranks(world_size: int) -> int:
    """Ranks sharing this node's memory (the launchers set LOCAL_WORLD_SIZE)."""
    import os

    return int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
