"""Generation latency under ZeRO-3 before and after gathering the backbone once, in one process, interleaved.

    python -m tools.bench.eval_gather                 # tiny size, 2 CPU ranks (torchrun started for you)
    python -m tools.bench.eval_gather --size t5-large --nproc 8

tools/bench/speed.py measures each arm in its own processes one after another, so on a shared machine the load
can change between arms. Here one set of ranks times, round after round, the same greedy generation three
ways: (1) per module, as ZeRO-3 runs it (every weight gathered at every decoding step); (2) with the backbone
gathered once (`trainer.runtime.eval_gather`, as evaluation and trainer/cli/predict.py now do when it fits); (3) a plain,
unpartitioned copy of the same weights with torch's own linear restored: the replicated path (ZeRO-3 leaves
DeepSpeed's `zero3_linear_wrap` installed as `F.linear` for the whole process). All three must generate the
same tokens. The one-time gather is timed apart.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time


def worker(args) -> None:
    import torch
    import torch.nn.functional as F
    from deepspeed.runtime.zero.partition_parameters import InsertPostInitMethodToModuleSubClasses as Patch
    from transformers import T5ForConditionalGeneration

    from tools.bench.common import SIZES, model_overrides, synthetic_rows
    from trainer.runtime import distributed
    from trainer.data.batch import Encoded, collate
    from trainer.runtime.eval_gather import maybe_whole_backbone
    from trainer.models import seq2seq
    from trainer.main import build_run, read_inputs

    size = SIZES[args.size]
    inputs = read_inputs(None, model_overrides(size) + [
        f"output_dir={args.out}", "overwrite=true", f"ds_config={size.ds_config}",
        f"data.max_source_length={size.seq_len + 6}"])
    d = distributed.init()
    run = build_run(inputs, d)
    run.model.train(False)
    ids, labels = synthetic_rows(size.micro_batch, size.seq_len, size.target_len, size.vocab_size, 0)
    batch = {k: v.to(d.device) for k, v in collate(Encoded([None] * len(ids), [0] * len(ids), ids, labels, 0),
                                                   list(range(size.micro_batch)), 0).items()}
    backbone = run.model.backbone

    def generate(model):
        started = time.perf_counter()
        embeds, mask, _ = seq2seq.encoder_inputs(run.model.backbone, run.model.prompt_fn(), batch["input_ids"],
                                                 batch["attention_mask"])
        out = model.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=size.gen_tokens,
                             min_new_tokens=size.gen_tokens, do_sample=False, num_beams=1, synced_gpus=True)
        return time.perf_counter() - started, out

    times = {"per_module": [], "gathered": [], "replicated": []}
    with torch.no_grad():
        with maybe_whole_backbone(backbone, d.device, 1, True):  # a plain copy of the whole weights
            plain = T5ForConditionalGeneration(backbone.config).to(d.device, backbone.dtype).eval()
            plain.load_state_dict({k: v.detach().clone() for k, v in backbone.state_dict().items()})
        outs = {}
        for r in range(args.rounds + 1):  # round 0 warms up
            took, outs["per_module"] = generate(backbone)
            started = time.perf_counter()
            with maybe_whole_backbone(backbone, d.device, 1, True):
                gather_s = time.perf_counter() - started
                took_g, outs["gathered"] = generate(backbone)
            patched, F.linear = F.linear, Patch.linear_bk
            try:
                took_r, outs["replicated"] = generate(plain)
            finally:
                F.linear = patched
            if r:
                for key, t in (("per_module", took), ("gathered", took_g), ("replicated", took_r)):
                    times[key].append(t)
                times.setdefault("gather_once", []).append(gather_s)
    same = all(torch.equal(outs["per_module"], o) for o in outs.values())
    per_rank = distributed.all_gather_objects({k: statistics.median(v) for k, v in times.items()})
    if d.is_main:
        worst = {k: max(r[k] for r in per_rank) for k in per_rank[0]}
        print("EVAL_GATHER " + json.dumps({"size": args.size, "ranks": d.world_size, "micro_batch": size.micro_batch,
                                           "gen_tokens": size.gen_tokens, "same_tokens": same, **worst}), flush=True)
    distributed.barrier()
    distributed.destroy()
    distributed.exit_without_teardown(0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="tiny")
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--out", default="runs/bench-eval-gather")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    from trainer.runtime.distributed import free_port

    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(args.nproc), "--master_port",
           str(free_port()), "-m", "tools.bench.eval_gather", "--worker", "--size", args.size, "--rounds", str(args.rounds), "--out", args.out]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("EVAL_GATHER ")]
    if proc.returncode or not lines:
        print(proc.stderr[-3000:], file=sys.stderr)
        return 1
    r = json.loads(lines[-1].split(" ", 1)[1])
    per_example = {k: r[k] / r["micro_batch"] * 1e3 for k in ("per_module", "gathered", "replicated")}
    print(f"# {r['size']}, {r['ranks']} ranks, micro batch {r['micro_batch']}, {r['gen_tokens']} tokens, median of "
          f"{args.rounds} interleaved rounds (worst rank); same tokens all three ways: {r['same_tokens']}")
    print("| path | ms per example | x replicated |\n|---|---:|---:|")
    for key, ms in per_example.items():
        print(f"| {key} | {ms:.1f} | {ms / per_example['replicated']:.2f} |")
    print(f"gathering the backbone once: {r['gather_once'] * 1e3:.1f} ms")
    return 0 if r["same_tokens"] else 1


if __name__ == "__main__":
    sys.exit(main())
