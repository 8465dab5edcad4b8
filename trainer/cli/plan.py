"""`smop-plan`: predict step time and peak memory of each placement of the frozen backbone, name the ds_config.

    smop-plan --model t5-xl --gpu-mem 80 --ranks-per-node 8 --nodes 2 --gbps 200
    smop-plan --params 3e9 --gpu-mem 40 --ranks-per-node 4 --nodes 4 --gbps 100
    smop-plan --grid      # T5-large/XL/XXL, 8 GPUs on 1, 2, 8 nodes, 100/200/400 Gbit/s

The model and its assumptions are in trainer/perf/traffic.py (traffic, checked against
tools/bench/comm_volume.py) and trainer/perf/plan.py (memory from DeepSpeed's estimators, time from analytic
FLOPs and an assumed MFU); the shapes are trainer/perf/shapes.py's. Defaults: H100 SXM (989 TFLOP/s dense
bf16, 80 GiB), MFU 0.35, NVLink-class 2400 Gbit/s per device inside a node, SMoP 4 x 5, S = 512, T = 8, bf16,
the benchmark's micro batches for each size (tools/bench/common.py). T5 only: the traffic model is a T5's
module trace (trainer/perf/traffic.py says what a decoder-only one would need).
"""
from __future__ import annotations

import argparse
import math
import sys

from trainer.perf.plan import Hardware, Workload, notice, predict
from trainer.perf.shapes import T5_SHAPES, T5_VOCAB, T5Shape
from trainer.perf.traffic import ZeroSettings

VOCAB = T5_VOCAB
MICRO_BATCH = {"t5-large": 32, "t5-xl": 16, "t5-xxl": 8}
"""The benchmark's micro batch per size (tools/bench/common.py), the default workload of each."""
MODELS = {name: (T5_SHAPES[name], micro) for name, micro in MICRO_BATCH.items()}
"""The sizes planned for (the shape table's T5 v1.1 shapes, untied output layer), with their micro batch."""


def shape_for_params(params: float) -> T5Shape:
    """A T5 v1.1-proportioned shape (24+24 layers, d_ff = 2.5 d, 64-wide heads) of about `params` weights."""
    # params = 2 V d (untied) + 24 (4 d^2 + 7.5 d^2) + 24 (8 d^2 + 7.5 d^2) = 648 d^2 + 2 V d
    d = (-2 * VOCAB + math.sqrt(4 * VOCAB**2 + 4 * 648 * params)) / (2 * 648)
    d = max(64, int(round(d / 64)) * 64)
    return T5Shape(d, int(2.5 * d), 24, 24, d // 64, 64, VOCAB, True)


def workload(shape: T5Shape, micro: int, args) -> Workload:
    trainable = args.num_prompts * args.prompt_length * shape.d_model + shape.d_model * args.num_prompts
    return Workload(shape, False, 2, trainable, args.seq_len, args.target_len, args.prompt_length, micro,
                    args.accum, num_prompts=args.num_prompts)


def zero_settings(shape: T5Shape) -> ZeroSettings:
    """The shipped GPU ZeRO-3 configs' values; the prefetch bucket holds the largest matrix."""
    return ZeroSettings(1_000_000, 200_000_000, max(66_000_000, VOCAB * shape.d_model))


def table(model: str, shape: T5Shape, micro: int, hw: Hardware, args) -> list[str]:
    predictions = predict(workload(shape, micro, args), hw, zero_settings(shape))
    fitting = [p for p in predictions if p.fits and p.placement != "zero3_qwz"]
    best = min(fitting, key=lambda p: p.step_s) if fitting else None
    rows = []
    for p in predictions:
        mark = " <- use" if p is best else ""
        rows.append(f"| {model} | {hw.nodes} x {hw.ranks_per_node} | {hw.inter_gbps:g} | {p.placement} | "
                    f"{p.step_s * 1e3:,.0f} | {p.compute_s * 1e3:,.0f} | {p.comm_s * 1e3:,.0f} | "
                    f"{p.peak_bytes / 2**30:.1f}{'' if p.fits else ' (no fit)'} | {p.ds_config}"
                    f"{'; ' + '; '.join(p.notes) if p.notes else ''}{mark} |")
    if best is None:
        rows.append(f"| {model} | {hw.nodes} x {hw.ranks_per_node} | {hw.inter_gbps:g} | none fits | | | | | "
                    "ds_configs/t5_xxl_zero3_offload_bf16.json (parameters offloaded to CPU) |")
    return rows


HEADER = ["| model | nodes x GPUs | Gbit/s per node | placement | step ms | compute ms | comm ms | peak GiB | "
          "ds_config |", "|---|---|---|---|---|---|---|---|---|"]


def grid(args, hardware) -> list[str]:
    """One row per model, node split of 8 GPUs and bandwidth: step ms (peak GiB) of each placement."""
    names = ("replicated", "zero3", "zero3_hpz", "zero3_qwz")
    rows = ["| model | nodes x GPUs | Gbit/s per node | " + " | ".join(names) + " | use |",
            "|---|---|---|" + "---|" * len(names) + "---|"]
    for model, (shape, micro) in MODELS.items():
        for nodes in (1, 2, 8):
            for gbps in (100, 200, 400):
                hw = hardware(nodes, 8 // nodes, gbps)
                found = {p.placement: p for p in predict(workload(shape, args.micro_batch or micro, args), hw,
                                                         zero_settings(shape))}
                cells = [f"{found[n].step_s * 1e3:,.0f} ms ({found[n].peak_bytes / 2**30:.1f} GiB"
                         f"{'' if found[n].fits else ', no fit'})" if n in found else "-" for n in names]
                fitting = [p for p in found.values() if p.fits and p.placement != "zero3_qwz"]
                use = min(fitting, key=lambda p: p.step_s).placement if fitting else "offload"
                rows.append(f"| {model} | {nodes} x {8 // nodes} | {gbps} | " + " | ".join(cells) + f" | {use} |")
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=sorted(MODELS), default="t5-xl")
    p.add_argument("--params", type=float, help="instead of --model: a parameter count (T5 v1.1 proportions)")
    p.add_argument("--gpu-mem", type=float, default=80, help="GiB per GPU")
    p.add_argument("--ranks-per-node", type=int, default=8)
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--gbps", type=float, default=200, help="inter-node bandwidth per node, Gbit/s")
    p.add_argument("--intra-gbps", type=float, default=2400, help="intra-node bandwidth per GPU, Gbit/s")
    p.add_argument("--peak-tflops", type=float, default=989, help="dense bf16 TFLOP/s of one GPU")
    p.add_argument("--mfu", type=float, default=0.35, help="assumed model-FLOPs utilisation")
    p.add_argument("--micro-batch", type=int, help="default: tools/bench/speed.py's for the size")
    p.add_argument("--accum", type=int, default=1)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--target-len", type=int, default=8)
    p.add_argument("--num-prompts", type=int, default=4)
    p.add_argument("--prompt-length", type=int, default=5)
    p.add_argument("--chosen", help="a ds_config placement to check: replicated, zero3, zero3_hpz")
    p.add_argument("--grid", action="store_true", help="the docs/benchmarks.md table")
    args = p.parse_args(argv)

    def hardware(nodes, per_node, gbps):
        return Hardware(args.gpu_mem * 2**30, per_node, nodes, gbps, args.intra_gbps, args.peak_tflops * 1e12,
                        args.mfu)

    print(f"assumptions: {args.peak_tflops:g} TFLOP/s x MFU {args.mfu:g}; {args.gpu_mem:g} GiB per GPU; "
          f"{args.intra_gbps:g} Gbit/s per GPU inside a node; S={args.seq_len} T={args.target_len}, "
          f"{args.num_prompts} x {args.prompt_length} prompts, bf16")
    if args.grid:
        print("\n".join(grid(args, hardware)))
        return 0
    shape, micro = (shape_for_params(args.params), 16) if args.params else MODELS[args.model]
    name = f"{args.params:.3g} params (d={shape.d_model})" if args.params else args.model
    hw = hardware(args.nodes, args.ranks_per_node, args.gbps)
    print("\n".join(HEADER))
    print("\n".join(table(name, shape, args.micro_batch or micro, hw, args)))
    if args.chosen:
        predictions = predict(workload(shape, args.micro_batch or micro, args), hw, zero_settings(shape))
        print(notice(args.chosen, predictions, hw.device_memory) or f"{args.chosen}: no faster placement fits")
    return 0


if __name__ == "__main__":
    sys.exit(main())
