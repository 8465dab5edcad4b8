"""Measure GRIFFIN on T5: quality at rho = 1, 0.5, 0.25 against static selections, and decode time per token.

    OMP_NUM_THREADS=2 python -m tools.bench.griffin quality --ff gated --out runs/griffin-gated
    OMP_NUM_THREADS=2 python -m tools.bench.griffin speed --shape base
    OMP_NUM_THREADS=2 python -m tools.bench.griffin ffspeed

quality: trains a small T5 from scratch (all weights, a few minutes on a CPU) on a synthetic task whose
answers need the feed-forward layers: map every input symbol through a fixed random permutation and write
the result reversed (targets of 8-16 tokens, so most of each answer is generated after the window).
It then reports, for the flocking, magnitude and random selectors, the greedy exact-match and token accuracy
and the teacher-forced negative log-likelihood per target token (positions after the window only, where
the configurations differ). A random frozen backbone would not do: its neurons encode nothing to select.

speed: greedy decode time per token for the full FF and GRIFFIN at rho 0.5 and 0.25 (batch 1 and 16) on
random weights of the given shape ('base': T5 v1.1-base, d 768, d_ff 2048, 12 layers; 'tiny': the quality
model's shape). Per-token time = (time for 1 + N tokens - time for 1 token) / N, so the encoder is excluded.
ffspeed: one gated FF layer at one decoding step, full against pruned, at T5 v1.1 base/large/XL widths.
Prints one JSON line per measurement.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import T5Config, T5ForConditionalGeneration

from trainer.data.batch import pad
from trainer.inference import griffin
from trainer.perf.shapes import T5_SHAPES, T5_VOCAB

VOCAB, FIRST = 64, 3  # ids 0 pad, 1 </s>, 2 unused; symbols 3..63
_BASE = T5_SHAPES["t5-base"]
SHAPES = {"tiny": dict(d_model=64, d_ff=256, d_kv=16, num_heads=4, num_layers=2),
          "base": dict(d_model=_BASE.d_model, d_ff=_BASE.d_ff, d_kv=_BASE.d_kv, num_heads=_BASE.num_heads,
                       num_layers=_BASE.num_layers)}


def make_model(shape: str, ff: str, vocab: int = VOCAB, seed: int = 0) -> T5ForConditionalGeneration:
    torch.manual_seed(seed)
    config = T5Config(vocab_size=vocab, **SHAPES[shape], feed_forward_proj="gated-gelu" if ff == "gated" else "relu",
                      dropout_rate=0.0, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    return T5ForConditionalGeneration(config)


def task_batch(n: int, gen: torch.Generator, perm: torch.Tensor):
    """Inputs: 8-16 random symbols and </s>; targets: perm(symbols) reversed and </s>."""
    inputs, targets = [], []
    for length in torch.randint(8, 17, (n,), generator=gen).tolist():
        symbols = torch.randint(FIRST, VOCAB, (length,), generator=gen)
        inputs.append(symbols.tolist() + [1])
        targets.append(perm[symbols - FIRST].flip(0).tolist() + [1])
    ids, mask = pad(inputs, 0)
    return ids, mask, pad(targets, -100)[0]


def train(model, perm, steps: int, batch: int, lr: float):
    gen = torch.Generator().manual_seed(1)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 100) * max(0.05, 1 - s / steps))
    model.train()
    for step in range(steps):
        ids, mask, labels = task_batch(batch, gen, perm)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        opt.step(), sched.step(), opt.zero_grad()
        if step % 200 == 0 or step == steps - 1:
            print(json.dumps({"train_step": step, "loss": round(loss.item(), 4)}), flush=True)
    return model.eval()


@torch.no_grad()
def quality(model, ids, mask, labels, rho, window, selector) -> dict:
    """Greedy exact match / token accuracy, and NLL per target token after the window."""
    context = griffin.griffin(model, rho, window, 1, selector) if rho < 1 else None
    with context or torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, labels=labels).logits
    nll = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100, reduction="none").view_as(labels)
    after = labels.clone()
    after[:, :window] = -100
    kwargs = dict(input_ids=ids, attention_mask=mask, max_new_tokens=labels.shape[1] + 1, do_sample=False)
    out = griffin.generate(model, rho, window, selector, **kwargs) if rho < 1 else model.generate(**kwargs)
    out = out[:, 1:]  # drop the decoder start token
    width = max(out.shape[1], labels.shape[1])
    gold = F.pad(labels.clamp(min=0), (0, width - labels.shape[1]))
    pred = F.pad(out, (0, width - out.shape[1]))
    real = F.pad(labels != -100, (0, width - labels.shape[1]))
    return {"nll_after_window": round(float(nll[after != -100].mean()), 4),
            "exact_match": round(100 * float(((pred == gold) | ~real).all(1).float().mean()), 2),
            "token_accuracy": round(100 * float((pred == gold)[real].float().mean()), 2)}


def run_quality(args):
    perm = torch.randperm(VOCAB - FIRST, generator=torch.Generator().manual_seed(2)) + FIRST
    saved = Path(args.out) if args.out else None
    if saved and (saved / "config.json").exists():
        model = T5ForConditionalGeneration.from_pretrained(saved).eval()
    else:
        model = train(make_model("tiny", args.ff), perm, args.steps, args.batch, args.lr)
        if saved:
            model.save_pretrained(saved)
    ids, mask, labels = task_batch(args.eval_examples, torch.Generator().manual_seed(3), perm)
    full = quality(model, ids, mask, labels, 1.0, args.window, "flocking")
    print(json.dumps({"ff": args.ff, "rho": 1.0, "selector": "full", **full}), flush=True)
    for rho in (0.5, 0.25):
        for selector in griffin.SELECTORS:
            q = quality(model, ids, mask, labels, rho, args.window, selector)
            delta = round(q["nll_after_window"] - full["nll_after_window"], 4)
            print(json.dumps({"ff": args.ff, "rho": rho, "selector": selector, "window": args.window, **q,
                              "delta_nll": delta}), flush=True)


@torch.no_grad()
def decode_seconds(model, ids, new_tokens, rho) -> float:
    kwargs = dict(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                  max_new_tokens=new_tokens, min_new_tokens=new_tokens)
    started = time.perf_counter()
    if rho < 1:
        griffin.generate(model, rho, 2, "flocking", **kwargs)
    else:
        model.generate(**kwargs)
    return time.perf_counter() - started


def run_speed(args):
    model = make_model(args.shape, args.ff, vocab=T5_VOCAB if args.shape == "base" else VOCAB).eval()
    for batch in (1, 16):
        ids = torch.randint(FIRST, model.config.vocab_size, (batch, 32), generator=torch.Generator().manual_seed(0))
        for rho in (1.0, 0.5, 0.25):
            decode_seconds(model, ids, 4, rho)  # warm-up
            per_token = min((decode_seconds(model, ids, 1 + args.new_tokens, rho) - decode_seconds(model, ids, 1, rho))
                            / args.new_tokens for _ in range(args.repeats))
            print(json.dumps({"shape": args.shape, "ff": args.ff, "batch": batch, "rho": rho,
                              "threads": torch.get_num_threads(), "ms_per_token": round(1000 * per_token, 2)}),
                  flush=True)


FF_SHAPES = {name: (T5_SHAPES[f"t5-{name}"].d_model, T5_SHAPES[f"t5-{name}"].d_ff) for name in ("base", "large", "xl")}
"""(d_model, d_ff) of T5 v1.1 base, large and XL, from trainer/perf/shapes.py."""


@torch.no_grad()
def run_ff_speed(args):
    """One gated decoder FF layer at one decoding step (T = 1): full against GRIFFIN's pruned path.

    Less noisy than whole-model decoding on a shared machine, and it isolates what GRIFFIN changes.
    """
    from transformers.models.t5.modeling_t5 import T5DenseGatedActDense

    for name, (d, dff) in FF_SHAPES.items():
        config = T5Config(d_model=d, d_ff=dff, feed_forward_proj="gated-gelu", dropout_rate=0.0)
        dense = T5DenseGatedActDense(config).eval()
        for batch in (1, 16):
            x = torch.randn(batch, 1, d)
            for rho in (1.0, 0.5, 0.25):
                ff = griffin.GriffinFF(dense, rho, window=1)
                ff(x)  # the window step: full FF, statistic, then selection on the next call
                call = (lambda: dense(x)) if rho == 1 else (lambda: ff(x))
                call()
                best = float("inf")
                for _ in range(args.repeats):
                    started = time.perf_counter()
                    for _ in range(50):
                        call()
                    best = min(best, (time.perf_counter() - started) / 50)
                print(json.dumps({"ff_shape": name, "d_model": d, "d_ff": dff, "batch": batch, "rho": rho,
                                  "path": "full" if rho == 1 else ("shared" if ff.shared else "per-example"),
                                  "threads": torch.get_num_threads(), "us_per_call": round(1e6 * best, 1)}),
                      flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=("quality", "speed", "ffspeed"))
    p.add_argument("--ff", choices=("gated", "plain"), default="gated")
    p.add_argument("--out", help="quality: save/reuse the trained model here")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--eval_examples", type=int, default=256)
    p.add_argument("--window", type=int, default=2)
    p.add_argument("--shape", choices=tuple(SHAPES), default="base")
    p.add_argument("--new_tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    {"quality": run_quality, "speed": run_speed, "ffspeed": run_ff_speed}[args.what](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
