"""Predicted step time and peak memory of each way to place the frozen T5 backbone, and the start-up notice
(T5 only, as trainer/perf/traffic.py's trace is: decoder-only backbones get no prediction and no notice).

Placements (ZeRO++ options only where DeepSpeed 0.19.8 applies them without an engine optimiser, the
trainer's case: `engine._configure_zero_optimizer` builds a `DeepSpeedZeRoOffload`, which takes the hpZ
group and the weight quantisation; qgZ quantises gradient reduce-scatters, which a frozen backbone has none of):

- replicated: ZeRO stage < 3, every rank holds the whole backbone (ds_configs/zero2_bf16.json).
- zero3: every weight partitioned over all ranks, gathered per module in forward and backward.
- zero3_hpz: ZeRO++ hpZ (`zero_hpz_partition_size` = ranks per node) keeps a second partition over the node.
  Only an optimiser step invalidates it (`stage3.invalidate_secondary_tensor`), and nothing steps a frozen
  backbone, so after the first step every gather stays inside the node.
- zero3_qwz: ZeRO++ qwZ (`zero_quantized_weights`) all-gathers int8 weights: half the bf16 bytes, but every
  forward then runs on dequantised int8 weights (lossy; CUDA only: DeepSpeed's CUDAQuantizer). Reported,
  never suggested.

Memory: model states from DeepSpeed's own estimators (`estimate_zero2/zero3_model_states_mem_needs`, the
variants with the optimiser offloaded: they then count exactly the bf16 weights, the gather buffer and no
optimiser state or gradient on the device, which is a frozen backbone's case) plus the trainable part (the
ZeRO-2 estimator on one device: weights, gradients and Adam states) plus activations, which DeepSpeed does not
estimate: Korthikanti et al. 2022's 34·s·b·d bytes per transformer layer (16-bit, no recomputation, no
stored attention scores: SDPA), and the logits.

Time: compute = analytic training FLOPs (trainer/perf/flops.py; backward through a frozen backbone = 1 x forward)
/ (peak FLOP/s x MFU), both assumptions stated by the caller. Communication = the bytes of
trainer/perf/traffic.py over the slower of the inter-node link (per node) and the intra-node link (per device),
ring algorithms. ZeRO-3's gathers are prefetched on their own stream, so its step is max(compute,
communication); the replicated path's small all-reduce comes after the backward and adds.

The estimators are the one DeepSpeed import outside trainer/runtime/distributed.py: plain arithmetic, imported where
used, with no process group or engine involved.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from trainer.perf.flops import ANALYTIC_METHODS, method_flops
from trainer.perf.shapes import T5Shape
from trainer.perf.traffic import GUARD_FLAGS, TOKEN_COUNT, ZeroSettings, backbone_numels, gathered_per_micro_batch

CLEARLY_SLOWER = 1.25  # the start-up notice appears when the chosen placement is predicted this much slower
HEADROOM = 0.9  # a placement fits when its predicted peak is within this share of the device memory
SHIPPED_ZERO3 = {1024: "ds_configs/t5_large_zero3_bf16.json", 2048: "ds_configs/t5_xl_zero3_bf16.json"}


@dataclass(frozen=True)
class Hardware:
    device_memory: float
    """Bytes per device."""
    ranks_per_node: int
    nodes: int
    inter_gbps: float
    """Inter-node bandwidth of one node, Gbit/s."""
    intra_gbps: float = 2400.0
    """Intra-node bandwidth of one device, Gbit/s (NVLink-class: ~300 GB/s all-gather bus bandwidth)."""
    peak_flops: float = 989e12
    """Dense bf16 FLOP/s of one device (H100 SXM)."""
    mfu: float = 0.35
    """Assumed model-FLOPs utilisation of the compute."""

    @property
    def ranks(self) -> int:
        return self.ranks_per_node * self.nodes


@dataclass(frozen=True)
class Workload:
    shape: T5Shape
    tied: bool
    dtype_bytes: int
    trainable: int
    seq_len: int
    target_len: int
    prompt_length: int
    micro_batch: int
    accum: int
    method: str = "smop"
    num_prompts: int = 4


@dataclass
class Prediction:
    placement: str
    ds_config: str
    states_bytes: float
    activation_bytes: float
    compute_s: float
    comm_s: float
    step_s: float
    fits: bool
    notes: list[str] = field(default_factory=list)

    @property
    def peak_bytes(self) -> float:
        return self.states_bytes + self.activation_bytes


def largest_tensor(shape: T5Shape, tied: bool) -> int:
    return max(backbone_numels(shape, tied).values())


def model_states(placement: str, w: Workload, hw: Hardware) -> float:
    """Bytes of weights (and trainable state) per device, from DeepSpeed's estimators."""
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    total = sum(backbone_numels(w.shape, w.tied).values())
    largest = largest_tensor(w.shape, w.tied)
    scale = w.dtype_bytes / 2  # the estimators count 16-bit weights
    _, trainable = estimate_zero2_model_states_mem_needs(w.trainable, 1, 1, cpu_offload=False)
    if placement == "replicated":
        _, gpu = estimate_zero2_model_states_mem_needs(total, hw.ranks_per_node, hw.nodes, cpu_offload=True)
        return gpu * scale + trainable
    _, gpu, buffer = estimate_zero3_model_states_mem_needs(total, largest, hw.ranks_per_node, hw.nodes,
                                                           cpu_offload=True, cpu_offload_params=False)
    if placement == "zero3_hpz":  # plus the secondary partition over the node's ranks
        _, node, _ = estimate_zero3_model_states_mem_needs(total, largest, hw.ranks_per_node, 1,
                                                           cpu_offload=True, cpu_offload_params=False)
        gpu += node - buffer
    return gpu * scale + trainable


def activations(w: Workload) -> float:
    """Bytes of activations kept for the backward of one micro batch (rough: see the module docstring)."""
    s, per_token_layer = w.shape, 34 * w.shape.d_model * w.dtype_bytes / 2
    source = w.seq_len + w.prompt_length
    encoder = s.num_layers * source * per_token_layer
    decoder = s.num_decoder_layers * (w.target_len * per_token_layer + 2 * source * s.d_model * w.dtype_bytes)
    logits = w.target_len * s.vocab_size * (w.dtype_bytes + 4 + 4)  # logits, fp32 copy, its gradient
    return w.micro_batch * (encoder + decoder + logits)


def compute_seconds(w: Workload, hw: Hardware) -> float:
    forward = method_flops(w.method, w.shape, w.seq_len, w.target_len, w.num_prompts, w.prompt_length)
    return 2 * forward * w.micro_batch * w.accum / (hw.peak_flops * hw.mfu)


def gather_seconds(payload: float, hw: Hardware, inside_node: bool = False) -> float:
    """All-gather of `payload` bytes over all ranks (ring), or only within each node."""
    g, n = hw.ranks_per_node, 1 if inside_node else hw.nodes
    intra = payload * (g - 1) / g / (hw.intra_gbps * 1e9 / 8)
    inter = payload * (n - 1) / n / (hw.inter_gbps * 1e9 / 8)
    return max(intra, inter)


def predict(w: Workload, hw: Hardware, zero: ZeroSettings = ZeroSettings(1_000_000, 200_000_000, 66_000_000)
            ) -> list[Prediction]:
    """One Prediction per placement (hpZ only across nodes, where it differs from plain ZeRO-3)."""
    compute = compute_seconds(w, hw)
    act = activations(w)
    allreduce = 2 * gather_seconds(4 * (w.trainable + TOKEN_COUNT + GUARD_FLAGS), hw)
    gathered = gathered_per_micro_batch(w.shape, w.tied, hw.ranks, zero) * w.accum * w.dtype_bytes
    zero3_config = SHIPPED_ZERO3.get(w.shape.d_model, "ds_configs/zero3_bf16.json")
    cells = [("replicated", "ds_configs/zero2_bf16.json", 0.0, []),
             ("zero3", zero3_config, gather_seconds(gathered, hw), [])]
    if hw.nodes > 1 and hw.ranks_per_node > 1:  # DeepSpeed needs zero_hpz_partition_size > 1
        cells.append(("zero3_hpz", "ds_configs/zero3_hpz_bf16.json", gather_seconds(gathered, hw, inside_node=True),
                      [f"set zero_hpz_partition_size={hw.ranks_per_node}"]))
    cells.append(("zero3_qwz", f"{zero3_config} + zero_quantized_weights", gather_seconds(gathered / 2, hw),
                  ["lossy (int8 weights), CUDA only: not suggested"]))
    out = []
    for placement, config, comm, notes in cells:
        states = model_states("zero3" if placement == "zero3_qwz" else placement, w, hw)
        step = compute + allreduce if placement == "replicated" else max(compute, comm) + allreduce
        out.append(Prediction(placement, config, states, act, compute, comm + allreduce, step,
                              states + act <= HEADROOM * hw.device_memory, notes))
    return out


def chosen_placement(ds_config: dict) -> str:
    z = ds_config.get("zero_optimization", {})
    if z.get("stage", 0) < 3:
        return "replicated"
    if z.get("zero_hpz_partition_size", 1) > 1:
        return "zero3_hpz"
    return "zero3_qwz" if z.get("zero_quantized_weights") else "zero3"


def notice(chosen: str, predictions: list[Prediction], device_memory: float) -> str | None:
    """One line when `chosen` is predicted clearly slower than another placement that fits, else None."""
    mine = next(p for p in predictions if p.placement == chosen)
    better = [p for p in predictions if p.fits and p.placement not in (chosen, "zero3_qwz")
              and mine.step_s >= CLEARLY_SLOWER * p.step_s]
    if not better:
        return None
    best = min(better, key=lambda p: p.step_s)
    extra = f" ({'; '.join(best.notes)})" if best.notes else ""
    return (f"placement: {chosen} is predicted {mine.step_s / best.step_s:.1f}x slower per step than {best.placement}, "
            f"which fits ({best.peak_bytes / 2**30:.1f} of {device_memory / 2**30:.0f} GiB predicted)"
            f": ds_config={best.ds_config}{extra}; see smop-plan")


def whole_backbone_fits(total_params: int, dtype_bytes: int, memory: float, in_use: float) -> bool:
    """Whether the whole backbone fits next to what is in use: its weights as DeepSpeed's ZeRO-2 estimator
    counts replicated 16-bit weights (optimiser offloaded: none here), scaled to the dtype."""
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    _, weights = estimate_zero2_model_states_mem_needs(total_params, 1, 1, cpu_offload=True)
    return in_use + weights * dtype_bytes / 2 <= HEADROOM * memory


PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "H800": 989e12, "A100": 312e12, "A800": 312e12, "L40S": 362e12}
"""Dense bf16 FLOP/s by device name (a name not listed is taken for an A100-class 312e12)."""
CPU_PEAK_FLOPS, CPU_COPY_GBPS = 5e10, 80.0  # the CPU "device": rough, only to keep the check defined there


def startup_notice(w: Workload, hw: Hardware, ds_config: dict) -> str | None:
    """The start-up line: the ds_config's placement is predicted clearly slower than another that fits
    (None otherwise). The caller leaves out full fine-tuning, whose backbone has gradients and optimiser
    state this model omits, and methods without an analytic cost (`ANALYTIC_METHODS`)."""
    return notice(chosen_placement(ds_config), predict(w, hw, ZeroSettings.from_ds_config(ds_config)),
                  hw.device_memory)
