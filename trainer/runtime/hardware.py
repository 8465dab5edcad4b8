"""What this rank's device offers: its memory, what is in use, and the `Hardware` the placement plan takes.

The device queries of the performance model (trainer/perf/plan.py is arithmetic on what these return).
"""
from __future__ import annotations

import os

import torch

from trainer.perf.plan import CPU_COPY_GBPS, CPU_PEAK_FLOPS, PEAK_FLOPS, Hardware


def device_memory(device: torch.device, local_ranks: int = 1) -> float:
    """Bytes one rank may use: the accelerator's memory, or on the CPU the host's RAM shared by its ranks."""
    if device.type == "cuda":
        return float(torch.cuda.get_device_properties(device).total_memory)
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / max(1, local_ranks)


def memory_in_use(device: torch.device) -> float:
    """Bytes this rank holds now: allocated accelerator memory, or the process's resident set on the CPU."""
    if device.type == "cuda":
        return float(torch.cuda.memory_allocated(device))
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def local_ranks(world_size: int) -> int:
    """Ranks sharing this node's memory (the launchers set LOCAL_WORLD_SIZE)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", world_size))


def hardware(device: torch.device, world_size: int, inter_gbps: float) -> Hardware:
    """This job's hardware as the placement plan sees it: device memory, ranks per node and nodes, the
    inter-node bandwidth the user states (`interconnect_gbps`), and the device's peak FLOP/s by name."""
    per_node = local_ranks(world_size)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak, intra = next((f for key, f in PEAK_FLOPS.items() if key in name), 312e12), 2400.0
    else:
        peak, intra = CPU_PEAK_FLOPS, CPU_COPY_GBPS
    return Hardware(device_memory(device, per_node), per_node, max(1, world_size // per_node), inter_gbps, intra, peak)
