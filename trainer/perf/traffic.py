"""Where the frozen backbone should live: the traffic model of one training step.

Pure functions of the T5 shape, dtype, ranks and micro batches: no process group, no DeepSpeed.
tools/bench/comm_volume.py measures the same quantity (every collective the trainer and DeepSpeed make, counted in
the ring-algorithm bytes NCCL moves); docs/benchmarks.md compares the two, and trainer/perf/plan.py turns it
into step times. Per rank and step, bytes received (= sent):

- replicated (ZeRO stage < 3: every rank holds the whole frozen backbone): only the trainer's own
  all-reduces, 2(W-1)/W x 4 bytes x (trainable parameters + the global token count + the guard's 2 flags).
- ZeRO-3: the same, plus (W-1)/W x dtype bytes x the elements all-gathered per micro batch. Which weights
  are gathered, and how often, follows DeepSpeed's rule for a recorded module trace
  (runtime/zero/partitioned_param_coordinator.py): a weight is gathered when a module needs it and is not
  whole, and released after the module unless the trace uses it again within the next
  `keep_window` elements (max of stage3_max_reuse_distance and stage3_prefetch_bucket_size: the prefetcher
  also keeps weights whose next use it has already scanned). The trace is the forward in module order, then
  the backward in reverse order over the modules the gradient passes through: with a frozen backbone the
  gradient only flows back to the prompts, so the embedding lookups, relative position biases and the first
  decoder block's self-attention and cross-attention query (which see no prompt-dependent input) have no
  backward. Tensors up to stage3_param_persistence_threshold are never gathered after start-up. With ZeRO++
  hpZ the gathers read from the node's secondary partition: (h-1)/h instead of (W-1)/W, h ranks per node.

T5 only: the trace below is a T5's, so trainer/perf/plan.py, smop-plan and the start-up placement line
(trainer/main.py `placement_notice`) skip decoder-only backbones. A causal trace would need: the module order
of trainer/models/causal.py's forward (the embedding, called once over [input ; target]; per layer the input
norm, q, k and v (k and v kv_heads x head_dim wide), o, the post-attention norm, gate, up, down; the final
norm; the output layer, which is the embedding matrix gathered a second time when tied); which uses have a
backward (every layer's, since the prompts sit before every input and target column; not the embedding
lookup); the same replay of DeepSpeed's reuse rule over it; a measurement against tools/bench/comm_volume.py,
which builds T5s only today; and, in plan.py, activations over l + S + T positions through every layer (no
encoder/decoder split) and logits over T + 1 columns.
"""
from __future__ import annotations

from dataclasses import dataclass

from trainer.perf.shapes import T5Shape

GUARD_FLAGS = 2  # trainer/runtime/guard.py: one fp32 all-reduce of (non-finite loss, stop signal)
TOKEN_COUNT = 1  # trainer/loop.py: one fp32 all-reduce of the global batch's target tokens
RELATIVE_BUCKETS = 32  # T5's relative_attention_num_buckets


@dataclass(frozen=True)
class ZeroSettings:
    """The ds_config values the gather traffic depends on (DeepSpeed's defaults when absent)."""

    persistence_threshold: int = 100_000
    reuse_distance: int = 1_000_000_000
    prefetch_bucket: int = 50_000_000
    hpz_partition_size: int = 1
    """ZeRO++ hpZ: a second partition over this many ranks (a node), which serves every gather of a frozen
    weight after the first (only an optimiser step would invalidate it, and none steps the backbone)."""

    @classmethod
    def from_ds_config(cls, ds: dict) -> "ZeroSettings":
        z = ds.get("zero_optimization", {})
        return cls(int(z.get("stage3_param_persistence_threshold", cls.persistence_threshold)),
                   int(z.get("stage3_max_reuse_distance", cls.reuse_distance)),
                   int(z.get("stage3_prefetch_bucket_size", cls.prefetch_bucket)),
                   int(z.get("zero_hpz_partition_size", 1)))

    @property
    def keep_window(self) -> int:
        return max(self.reuse_distance, self.prefetch_bucket)


def t5_trace(s: T5Shape, tied: bool) -> list[tuple[str, int, bool]]:
    """(weight name, elements, has a backward) for every weight use of one forward, in module order.

    The trainer calls the embedding itself (`trainer.models.seq2seq.encoder_inputs`), then the encoder on
    [prompt ; embeddings], then the decoder, whose own embedding lookup reuses the same (shared) matrix.
    """
    d, inner, ff = s.d_model, s.inner, s.d_ff
    ff_weights = [("wi_0", d * ff), ("wi_1", d * ff), ("wo", ff * d)] if s.gated else [("wi", d * ff), ("wo", ff * d)]
    uses = [("shared", s.vocab_size * d, False)]
    for i in range(s.num_layers):
        e = f"encoder.{i}."
        uses += [(e + "ln0", d, True), (e + "q", d * inner, True), (e + "k", d * inner, True),
                 (e + "v", d * inner, True)]
        uses += [(e + "bias", RELATIVE_BUCKETS * s.num_heads, False)] if i == 0 else []
        uses += [(e + "o", inner * d, True), (e + "ln1", d, True)] + [(e + n, k, True) for n, k in ff_weights]
    uses += [("encoder.final_ln", d, True), ("shared", s.vocab_size * d, False)]
    for i in range(s.num_decoder_layers):
        x, grad = f"decoder.{i}.", i > 0  # block 0's self-attention sees only the (gradient-free) targets
        uses += [(x + "ln0", d, grad), (x + "q", d * inner, grad), (x + "k", d * inner, grad),
                 (x + "v", d * inner, grad)]
        uses += [(x + "bias", RELATIVE_BUCKETS * s.num_heads, False)] if i == 0 else []
        uses += [(x + "o", inner * d, grad), (x + "ln1", d, grad), (x + "cq", d * inner, grad),
                 (x + "ck", d * inner, True), (x + "cv", d * inner, True), (x + "co", inner * d, True),
                 (x + "ln2", d, True)] + [(x + n, k, True) for n, k in ff_weights]
    uses += [("decoder.final_ln", d, True), ("shared" if tied else "lm_head", s.vocab_size * d, True)]
    return uses


def backbone_numels(s: T5Shape, tied: bool) -> dict[str, int]:
    """Every distinct weight of the backbone and its elements."""
    return {name: n for name, n, _ in t5_trace(s, tied)}


def padded(numel: int, ranks: int) -> int:
    """ZeRO-3 pads each tensor to a multiple of the ranks before partitioning it."""
    return -(-numel // ranks) * ranks


def gathered_per_micro_batch(s: T5Shape, tied: bool, ranks: int, z: ZeroSettings) -> int:
    """Elements all-gathered in one forward + backward under ZeRO-3 (steady state: after the recorded trace)."""
    forward = t5_trace(s, tied)
    trace = [(name, n) for name, n, _ in forward] + [(name, n) for name, n, grad in reversed(forward) if grad]
    whole, total = set(), 0
    for t, (name, n) in enumerate(trace):
        if n <= z.persistence_threshold:
            continue
        if name not in whole:
            total += padded(n, ranks)
            whole.add(name)
        traversed, reused = 0, False
        for later, m in trace[t + 1:]:
            if traversed >= z.keep_window:
                break
            if later == name:
                reused = True
                break
            traversed += m
        if not reused:
            whole.discard(name)
    return total


def step_volume(s: T5Shape, tied: bool, dtype_bytes: int, trainable: int, ranks: int, micro_batches: int,
                placement: str, z: ZeroSettings = ZeroSettings()) -> float:
    """Bytes one rank receives (= sends) in one training step under `placement` ('zero3' or 'replicated')."""
    if ranks == 1:
        return 0.0
    share = (ranks - 1) / ranks
    trainer = 2 * share * 4 * (trainable + TOKEN_COUNT + GUARD_FLAGS)
    if placement == "replicated":
        return trainer
    if placement != "zero3":
        raise ValueError(f"unknown placement '{placement}' (replicated, zero3)")
    group = z.hpz_partition_size if z.hpz_partition_size > 1 else ranks  # who a gather reads from
    gather_share = (group - 1) / group
    return trainer + gather_share * dtype_bytes * gathered_per_micro_batch(s, tied, ranks, z) * micro_batches
