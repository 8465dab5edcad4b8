"""Throughput of many adapters over one backbone: mixed batches against one adapter at a time.

    OMP_NUM_THREADS=2 python -m tools.bench.adapters [--adapters 4] [--batch 16] [--requests 128] \
        [--d_model 256] [--layers 4] [--mode generate|score]

A stream of requests, each for a random adapter, is served in arrival order in windows of --batch:
- mixed: one backbone forward (or generate) per window, each row routed by its own adapter;
- sequential: per window, one call per adapter present, on that adapter's rows only (the same requests,
  smaller batches).
Random weights (speed only); every generation runs exactly --new_tokens steps so both do the same work.
Prints one JSON line per strategy with requests/s.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch
from transformers import T5Config, T5ForConditionalGeneration

from trainer.data.batch import pad
from trainer.inference.multi_adapter import MultiAdapterModel
from trainer.methods.smop import SMoP


def build(args):
    torch.manual_seed(0)
    config = T5Config(vocab_size=args.vocab, d_model=args.d_model, d_ff=4 * args.d_model, d_kv=64,
                      num_heads=max(1, args.d_model // 64), num_layers=args.layers, feed_forward_proj="gated-gelu",
                      dropout_rate=0.0, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    backbone = T5ForConditionalGeneration(config).eval().requires_grad_(False)
    adapters = {f"a{i}": SMoP(args.d_model, 4, 5).eval() for i in range(args.adapters)}
    return MultiAdapterModel(backbone, adapters)


def requests(args, names):
    gen = torch.Generator().manual_seed(1)
    lengths = torch.randint(args.min_len, args.max_len + 1, (args.requests,), generator=gen).tolist()
    ids = [torch.randint(3, args.vocab, (n,), generator=gen).tolist() + [1] for n in lengths]
    chosen = torch.randint(0, len(names), (args.requests,), generator=gen).tolist()
    return ids, chosen


def serve(model, rows, adapter_ids, args):
    input_ids, mask = pad(rows, 0)
    batch = {"input_ids": input_ids, "attention_mask": mask}
    if args.mode == "generate":
        model.generate(batch, torch.tensor(adapter_ids), args.new_tokens, min_new_tokens=args.new_tokens)
    else:
        model.score_candidates(batch, torch.tensor(adapter_ids), [torch.tensor([5, 1]), torch.tensor([6, 7, 1])])


def run(model, ids, chosen, args, strategy: str) -> float:
    started = time.perf_counter()
    for start in range(0, len(ids), args.batch):
        window = list(range(start, min(start + args.batch, len(ids))))
        if strategy == "mixed":
            serve(model, [ids[i] for i in window], [chosen[i] for i in window], args)
        else:
            for a in sorted({chosen[i] for i in window}):
                rows = [i for i in window if chosen[i] == a]
                serve(model, [ids[i] for i in rows], [a] * len(rows), args)
    return time.perf_counter() - started


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--adapters", type=int, default=4)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--requests", type=int, default=128)
    p.add_argument("--d_model", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--vocab", type=int, default=1000)
    p.add_argument("--min_len", type=int, default=20)
    p.add_argument("--max_len", type=int, default=60)
    p.add_argument("--new_tokens", type=int, default=8)
    p.add_argument("--mode", choices=("generate", "score"), default="generate")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    model = build(args)
    ids, chosen = requests(args, model.names)
    with torch.no_grad():
        run(model, ids[: args.batch], chosen[: args.batch], args, "mixed")  # warm-up
        # Alternate the strategies within each repeat so that load from other processes hits both alike.
        times = {"mixed": [], "sequential": []}
        for _ in range(args.repeats):
            for strategy in times:
                times[strategy].append(run(model, ids, chosen, args, strategy))
        for strategy, measured in times.items():
            best = min(measured)
            print(json.dumps({"strategy": strategy, "mode": args.mode, "adapters": args.adapters,
                              "batch": args.batch, "requests": args.requests, "d_model": args.d_model,
                              "layers": args.layers, "threads": torch.get_num_threads(), "seconds": round(best, 3),
                              "requests_per_s": round(args.requests / best, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
