"""The distributed seam: process groups, collectives, ZeRO-3 construction and gathering.

Nothing else in the trainer imports torch.distributed or deepspeed. The design (see README, "How the work
is split across ranks"): DeepSpeed ZeRO-3 shards and gathers the frozen backbone; the SMoP parameters live
outside the engine, replicated and fp32 on every rank, updated by a plain torch optimiser after one
all-reduce of their gradients. Every rank therefore applies the same update to the same values.
"""
from __future__ import annotations

import contextlib
import datetime
import os
import socket
import sys
import time
from dataclasses import dataclass

import deepspeed
import torch
import torch.distributed as dist
from deepspeed.accelerator import get_accelerator


@dataclass(frozen=True)
class Dist:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    hosts: tuple[str, ...] = ()
    """The host name of every rank, in rank order: which node each rank ran on (run_info.json)."""
    pids: tuple[int, ...] = ()
    """The process id of every rank, in rank order (a hang report names the ranks that could not report)."""

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init(timeout_minutes: float = 30.0) -> Dist:
    """Join the process group of whichever launcher started us (deepspeed, torchrun, mpirun, Slurm srun).

    A plain `python trainer/main.py` has no launcher: we make it a world of one rather than let DeepSpeed
    fall back to MPI discovery, which fails where no MPI runtime is installed.
    """
    under_mpi = "OMPI_COMM_WORLD_SIZE" in os.environ or "PMI_SIZE" in os.environ
    if "RANK" not in os.environ and not under_mpi:
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=os.environ.get("MASTER_PORT") or str(free_port()))
    accelerator = get_accelerator()
    # Under mpirun DeepSpeed's MPI discovery sets MASTER_PORT to `distributed_port`, overwriting the
    # environment, so a port chosen with `mpirun -x MASTER_PORT=...` must be passed through here.
    deepspeed.init_distributed(dist_backend=accelerator.communication_backend_name(),
                               timeout=datetime.timedelta(minutes=timeout_minutes),
                               distributed_port=int(os.environ.get("MASTER_PORT") or 29500))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if accelerator.device_name() == "cpu":
        device = torch.device("cpu")
        _share_cpu_cores(int(os.environ.get("LOCAL_WORLD_SIZE", dist.get_world_size())))
    else:
        accelerator.set_device(local_rank)
        device = torch.device(accelerator.device_name(), local_rank)
    hosts, pids = zip(*all_gather_objects((socket.gethostname(), os.getpid())))
    return Dist(dist.get_rank(), dist.get_world_size(), local_rank, device, hosts, pids)


def _share_cpu_cores(local_ranks: int) -> None:
    # Each rank's PyTorch would otherwise use every core; 2 ranks on 2 cores then run at half speed.
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, local_ranks)))


def free_port() -> int:
    """A TCP port free on this host now (for MASTER_PORT)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- host <-> device, without stalling the queue ----------------------------------------------------

def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy a host tensor to `device` without making the host wait for the device.

    A plain `.to(cuda)` synchronises the stream after the copy, so the host could not queue step n+1
    while step n runs. From pinned memory the copy is queued like a kernel instead.
    """
    if device.type == "cpu":
        return tensor
    return tensor.pin_memory().to(device, non_blocking=True)


class HostCopy:
    """A device tensor's values on their way to the host: `read()` waits for this copy only.

    `.tolist()` on a device tensor would wait for everything queued after it too (the next step's forward
    and backward); a non-blocking copy into pinned memory plus an event waits only for the copy.
    """

    def __init__(self, tensor: torch.Tensor):
        self.event = None
        self.value = tensor.detach().to("cpu", non_blocking=True)
        if tensor.device.type != "cpu":
            self.event = get_accelerator().Event()
            self.event.record()

    def read(self) -> list:
        if self.event is not None:
            self.event.synchronize()
        return self.value.tolist()


# --- what this rank is doing: the last collective it entered, the time it waits in collectives -------

@dataclass
class CollectiveNote:
    """The last collective this rank entered through this module (a hang report says where a rank waits)."""

    op: str
    """The function of this module, e.g. all_reduce_grads."""
    entered: float
    """time.time() when it was entered."""
    returned: bool = False
    """False while the rank is still inside it (or it raised)."""


_last: CollectiveNote | None = None
_clock = None  # a trainer.runtime.steptime.StepClock told about every collective while it times a step


def last_collective() -> CollectiveNote | None:
    """The note of the last collective entered (read by the watchdog's thread: a plain attribute, no lock)."""
    return _last


def time_collectives(clock) -> None:
    """Tell `clock` (a StepClock, or None to stop) the time spent inside each collective of a timed step:
    what a rank waits there for the others is not its own step time."""
    global _clock
    _clock = clock


@contextlib.contextmanager
def _collective(op: str):
    # A note and, while a step is timed, two clock marks: cheap enough for every collective of every step.
    global _last
    note = _last = CollectiveNote(op, time.time())
    if _clock is None:
        yield
    else:
        with _clock.waiting():
            yield
    note.returned = True


# --- collectives --------------------------------------------------------------------------------------

def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks, in place; returns the tensor."""
    if dist.get_world_size() > 1:
        with _collective("all_reduce_sum"):
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def max_over_ranks(value: int, device: torch.device) -> int:
    """The largest of every rank's `value`, on every rank (a status code: 0 = fine). Every rank must call it
    at the same point; it also serves as the barrier there."""
    if dist.get_world_size() == 1:
        return value
    flag = torch.tensor([value], dtype=torch.int64, device=device)
    with _collective("max_over_ranks"):
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return int(flag.item())


def all_gather_floats(value: float, device: torch.device) -> list[float]:
    """Every rank's `value`, in rank order, on every rank: one float each (e.g. its step time)."""
    if dist.get_world_size() == 1:
        return [value]
    mine = torch.tensor([value], dtype=torch.float64, device=device)
    everyone = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
    with _collective("all_gather_floats"):
        dist.all_gather(everyone, mine)
    return [float(t.item()) for t in everyone]


def all_reduce_grads(params: list[torch.nn.Parameter]) -> None:
    """Sum the gradients of replicated parameters over ranks with one flat all-reduce.

    The loss is already divided by the global token count, so the sum is the global-batch gradient.
    """
    if dist.get_world_size() == 1:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    with _collective("all_reduce_grads"):
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    for p, chunk in zip(params, flat.split([g.numel() for g in grads])):
        p.grad = chunk.view_as(p).clone()


def broadcast_params(params: list[torch.Tensor], src: int = 0) -> None:
    """Make every rank start from rank `src`'s values (guards against any init that drew different numbers)."""
    if dist.get_world_size() > 1:
        with _collective("broadcast_params"):
            for p in params:
                dist.broadcast(p.data, src=src)


def all_gather_objects(obj) -> list:
    """Every rank's `obj`, in rank order, on every rank."""
    out = [None] * dist.get_world_size()
    with _collective("all_gather_objects"):
        dist.all_gather_object(out, obj)
    return out


def replicas_identical(params: list[torch.nn.Parameter]) -> bool:
    """True when every rank holds bit-identical values of `params` (compared exactly, not by checksum); also
    for none (full fine-tuning's empty prompt slot), decided alike on every rank."""
    if dist.get_world_size() == 1 or not params:
        return True
    flat = torch.cat([p.detach().reshape(-1) for p in params])
    everyone = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
    with _collective("replicas_identical"):
        dist.all_gather(everyone, flat)
    return all(torch.equal(everyone[0], other) for other in everyone[1:])


def barrier() -> None:
    with _collective("barrier"):
        dist.barrier()


def destroy() -> None:
    """Leave the process group, and MPI when mpirun started us: main exits without interpreter teardown,
    so mpi4py's own atexit finalisation would not run and mpirun would report an improper exit."""
    if dist.is_initialized():
        dist.destroy_process_group()
    mpi = sys.modules.get("mpi4py.MPI")
    if mpi is not None and mpi.Is_initialized() and not mpi.Is_finalized():
        mpi.Finalize()


def exit_without_teardown(code: int) -> None:
    """End the process now, after `destroy()` and with every file closed.

    Interpreter teardown after a gloo run aborts now and then in a C++ destructor ("terminate called without
    an active exception": 1 run in 12 on 2 CPU ranks here), turning a finished run into a failed one.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


# --- ZeRO-3 -------------------------------------------------------------------------------------------

def is_zero3(ds_config: dict) -> bool:
    return ds_config.get("zero_optimization", {}).get("stage", 0) == 3


@contextlib.contextmanager
def zero3_construction(ds_config: dict):
    """While open, transformers builds and loads models straight into ZeRO-3 partitions (zero.Init), so no
    rank ever holds the whole backbone. A no-op for other stages."""
    if not is_zero3(ds_config):
        yield
        return
    from transformers.integrations import HfDeepSpeedConfig

    keep_alive = HfDeepSpeedConfig(ds_config)  # transformers consults it through a weak reference
    try:
        yield
    finally:
        del keep_alive


def gather_whole_blocks(model: torch.nn.Module, block_classes: list[type]) -> None:
    """ZeRO-3: gather each block of `block_classes` in one go, by a hook on the block itself, with no hooks on
    the modules inside it (DeepSpeed's "z3 leaf" modules). A compiled block forward then sees whole weights
    without a graph break at every linear layer. Call before `shard_backbone`."""
    from deepspeed.utils import set_z3_leaf_modules

    set_z3_leaf_modules(model, block_classes)


_ENGINES: list = []


def shard_backbone(model: torch.nn.Module, ds_config: dict) -> torch.nn.Module:
    """Hand the frozen backbone to DeepSpeed, which installs the hooks that gather each module's weights
    for its forward and backward. No optimiser: nothing in the backbone trains.

    Returns the module to call. Call it directly, not through `engine.forward`: the engine's forward
    expects `engine.backward`, which needs an engine optimiser that this design does not have.

    ZeRO stages 0-2 shard only gradients and optimiser state, and the frozen backbone has neither (the SMoP
    parameters live outside the engine), so below stage 3 the backbone is simply replicated: moved to this
    rank's device and made identical to rank 0's. DeepSpeed could not do it for us anyway: for stage 1/2
    `deepspeed.initialize` without an optimiser asserts "zero stage N requires an optimizer" (0.19.x,
    `engine._configure_zero_optimizer`).
    """
    if not is_zero3(ds_config):
        model.to(torch.device(get_accelerator().current_device_name()))
        # What the engine's _broadcast_model would do: a random 'tiny' init or a stray local file must not
        # leave ranks with different backbones.
        broadcast_params(list(model.parameters()) + list(model.buffers()))
        return model
    engine, *_ = deepspeed.initialize(model=model, config=ds_config)
    _ENGINES.append(engine)  # keep the engine, which owns the gather/release hooks, alive for the process
    return engine.module


def shard_trainable_backbone(model: torch.nn.Module, ds_config: dict, lr: float, weight_decay: float,
                             max_grad_norm: float, make_scheduler):
    """Full fine-tuning: the backbone itself trains, so the engine gets an optimiser and, under ZeRO-3,
    partitions the gradients and optimiser states as well as the weights.

    `make_scheduler(optimizer)` builds the learning-rate schedule, which the engine steps with its optimiser.
    Returns the engine: train with `engine_backward_step`, call `engine.module` for forwards.
    """
    ds = dict(ds_config)
    # torch_adam: DeepSpeed's fused Adam would be JIT-compiled first (minutes, and no compiler on some hosts).
    ds["optimizer"] = {"type": "AdamW", "params": {"lr": lr, "weight_decay": weight_decay, "torch_adam": True}}
    ds["gradient_clipping"] = max_grad_norm
    # Without it ZeRO-3 refuses to gather the partitions into one state dict at the end.
    ds.setdefault("zero_optimization", {})
    ds["zero_optimization"] = {**ds["zero_optimization"], "stage3_gather_16bit_weights_on_model_save": True}
    model.requires_grad_(True)
    engine, *_ = deepspeed.initialize(model=model, model_parameters=[p for p in model.parameters()],
                                      config=ds, lr_scheduler=make_scheduler)
    _ENGINES.append(engine)
    return engine


def engine_backward_step(engine, loss: torch.Tensor, micro_batches_per_step: int) -> None:
    """Backward and (at the accumulation boundary) reduce-scatter, clip and step, through the engine.

    `loss` is this micro batch's share of the global-batch mean (already divided by the global token
    count), so the wanted gradient is the plain sum over micro batches and ranks. The engine divides each
    loss by the accumulation steps and averages gradients over ranks: undo both with one factor.
    """
    engine.backward(loss * micro_batches_per_step)
    engine.step()


def save_backbone(engine, output_dir: str) -> None:
    """Write the trained backbone's whole state dict (gathered from the partitions) as
    output_dir/backbone_final.bin. Call on every rank: the gather is collective."""
    engine.save_16bit_model(output_dir, "backbone_final.bin")


def norm(params) -> float:
    """L2 norm of `params`, also of ZeRO-3 partitioned ones (gathered one at a time: call on every rank)."""
    total = torch.zeros((), dtype=torch.float64)
    for p in params:
        with gathered([p]):
            total += p.detach().double().pow(2).sum().cpu()
    return float(total.sqrt())


def gathered(params, modifier_rank: int | None = None):
    """Context in which ZeRO-3 partitioned `params` are whole on every rank; a no-op for plain tensors."""
    params = [p for p in params if hasattr(p, "ds_id")]
    if not params:
        return contextlib.nullcontext()
    return deepspeed.zero.GatheredParameters(params, modifier_rank=modifier_rank)


@contextlib.contextmanager
def whole_backbone(module: torch.nn.Module):
    """Gather every ZeRO-3 partition of `module` once, keep the whole weights on every rank and lift the
    per-module gather/release hooks until exit; then partition again and put the hooks back. Call on every rank.

    For evaluation and generation of a backbone that fits on each device: otherwise every decoding step
    gathers every weight again. This is DeepSpeed's own `unwrap_model_for_generation` (0.19.x,
    runtime/zero/stage3.py, from TRL; deepspeedai/DeepSpeed#5658), which finds the hooks in the engine's
    `DeepSpeedZeRoOffload`, the "optimizer" DeepSpeed builds for an engine without one. A no-op when
    `module` is not partitioned (stage < 3, one device).
    """
    engine = next((e for e in _ENGINES if e is module or e.module is module), None)
    if engine is None:
        yield
        return
    from deepspeed.runtime.zero.stage3 import unwrap_model_for_generation

    # Start clean: every weight partitioned and no module still counted as using one. With activation
    # checkpointing a weight can be left marked in use after backward, and the re-partition at the end of the
    # gather would then refuse to free it ("still active in submodules").
    # (Not engine.empty_partition_cache(): the same plus a gc.collect() that takes ~1 s in this process.)
    getattr(engine.optimizer, "parameter_offload", engine.optimizer).partition_all_parameters()
    with unwrap_model_for_generation(engine):
        yield


def all_agree(flag: bool, device: torch.device) -> bool:
    """True when `flag` is true on every rank: a decision to enter a collective must be the same on all."""
    votes = all_reduce_sum(torch.tensor([int(flag)], device=device))
    return int(votes.item()) == dist.get_world_size()


def numel(p: torch.nn.Parameter) -> int:
    """Full element count, also of a ZeRO-3 partitioned parameter (whose .numel() is 0 outside a gather)."""
    return p.ds_numel if hasattr(p, "ds_id") else p.numel()


def local_numel(p: torch.nn.Parameter) -> int:
    """Elements this rank stores: its ZeRO-3 partition, or the whole tensor."""
    return p.ds_tensor.numel() if hasattr(p, "ds_id") else p.numel()


def is_partitioned(p: torch.nn.Parameter) -> bool:
    return hasattr(p, "ds_id")
