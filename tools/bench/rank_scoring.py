"""Rank classification on a causal LM: the prefix run once with its KV cache, against every candidate re-running
the whole sequence (trainer/models/causal.py `candidate_scores`, reuse_prefix on and off), side by side.

    OMP_NUM_THREADS=2 python -m tools.bench.rank_scoring                    # the shipped small Llama, CPU
    python -m tools.bench.rank_scoring --hidden 1024 --layers 8 --lengths 128 512 --candidates 2 3 8

Both paths are run alternately on the same batches (median of --repeats), after a check that they give the
same scores. Prints one row per (input length, number of candidates): milliseconds per batch of each and their
ratio; --json writes them.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from trainer.data.batch import pad
from trainer.methods.smop import SMoP
from trainer.models import causal
from trainer.models.prompted import PromptedModel
from trainer.paths import model_location


def backbone(args):
    torch.manual_seed(0)
    if not args.hidden:
        return AutoModelForCausalLM.from_pretrained(model_location("tiny-pretrained-causal")).eval()
    config = LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=4 * args.hidden,
                         num_hidden_layers=args.layers, num_attention_heads=max(1, args.hidden // 64),
                         num_key_value_heads=max(1, args.hidden // 64), max_position_embeddings=4096,
                         pad_token_id=0, eos_token_id=1, bos_token_id=None)
    return AutoModelForCausalLM.from_config(config).eval()


def inputs(model, length: int, batch: int) -> dict:
    gen = torch.Generator().manual_seed(length)
    vocab = model.config.vocab_size
    rows = [torch.randint(3, vocab, (length - 1,), generator=gen).tolist() + [1] for _ in range(batch)]
    ids, mask = pad(rows, 0)
    return {"input_ids": ids, "attention_mask": mask}


def candidates(model, count: int) -> list[torch.Tensor]:
    """`count` label words of 1 to 3 tokens, each ending in </s> (SuperGLUE's are 1-2 tokens plus </s>)."""
    gen = torch.Generator().manual_seed(count)
    vocab = model.config.vocab_size
    return [torch.tensor(torch.randint(3, vocab, (1 + i % 3,), generator=gen).tolist() + [1]) for i in range(count)]


@torch.no_grad()
def measure(wrapped: PromptedModel, batch: dict, cands: list[torch.Tensor], repeats: int) -> dict:
    fn = wrapped.prompt_fn()
    cached, _ = causal.candidate_scores(wrapped.backbone, fn, batch, cands, reuse_prefix=True)
    rerun, _ = causal.candidate_scores(wrapped.backbone, fn, batch, cands, reuse_prefix=False)
    torch.testing.assert_close(cached, rerun, rtol=1e-4, atol=1e-4)
    times = {True: [], False: []}
    for _ in range(repeats):
        for reuse in (True, False):
            started = time.perf_counter()
            causal.candidate_scores(wrapped.backbone, fn, batch, cands, reuse_prefix=reuse)
            times[reuse].append(time.perf_counter() - started)
    prefix, whole = statistics.median(times[True]), statistics.median(times[False])
    return {"prefix_cached_ms": round(1000 * prefix, 2), "rerun_ms": round(1000 * whole, 2),
            "rerun_over_cached": round(whole / prefix, 2)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hidden", type=int, default=0, help="a random Llama of this width; 0: the shipped small Llama")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--lengths", type=int, nargs="+", default=[16, 64, 256], help="input tokens per example")
    p.add_argument("--candidates", type=int, nargs="+", default=[2, 3, 8], help="label words per task")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", help="write the rows here")
    args = p.parse_args(argv)
    model = backbone(args)
    wrapped = PromptedModel(model, SMoP(model.config.hidden_size, 4, 5).eval(), causal)
    rows = []
    print(f"| input tokens | candidates | prefix cached ms | re-run ms | re-run / cached |  "
          f"(batch {args.batch}, {torch.get_num_threads()} threads, width {model.config.hidden_size})")
    print("|---:|---:|---:|---:|---:|")
    for length in args.lengths:
        for count in args.candidates:
            row = {"input_tokens": length, "candidates": count,
                   **measure(wrapped, inputs(model, length, args.batch), candidates(model, count), args.repeats)}
            rows.append(row)
            print(f"| {length} | {count} | {row['prefix_cached_ms']} | {row['rerun_ms']} | {row['rerun_over_cached']} |",
                  flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
