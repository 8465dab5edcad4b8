"""Measure GRIFFIN on T5 and on causal LMs: quality at rho = 1, 0.5, 0.25 against static selections, and decode
time per token.

    OMP_NUM_THREADS=2 python -m tools.bench.griffin quality --ff gated --out runs/griffin-gated
    OMP_NUM_THREADS=2 python -m tools.bench.griffin speed --shape base
    OMP_NUM_THREADS=2 python -m tools.bench.griffin ffspeed
    OMP_NUM_THREADS=2 python -m tools.bench.griffin quality --family causal
    OMP_NUM_THREADS=2 python -m tools.bench.griffin speed --family causal --shape base
    OMP_NUM_THREADS=2 python -m tools.bench.griffin ffspeed --family causal

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

--family causal (docs/inference.md, "GRIFFIN on causal LMs"), where the statistic is the prefill's:
quality: the shipped small Llama (trainer/assets/tiny-pretrained-causal, or --model), pretrained on the
instructed synthetic language of tools/assets/synthetic.py ("reverse : b3 b1 b5" -> "b5 b1 b3"; five
operations over five regions of symbols), so different instructions may use different neurons. Per
selector: greedy exact match and token accuracy, and the teacher-forced NLL per answer token after the first
(the first comes from the prefill, the full model, in every configuration).
speed: random Llama weights, 'tiny' (the shipped model's shape) or 'base' (d 768, d_ff 2048, 12 layers,
vocabulary 32000), 32-token prompts, the prefill excluded as for T5. ffspeed: one Llama MLP (SwiGLU) at one
decoding step at the widths of Qwen2-0.5B and Llama-3.2-1B.
Every mode takes --ff_shape tiny / --shape tiny / small eval sizes, so a test runs each in seconds.
Prints one JSON line per measurement.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import contextlib
import random

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, T5Config, T5ForConditionalGeneration
from transformers.models.llama.modeling_llama import LlamaMLP

from tools.assets.pretrain_tiny import no_prompt
from tools.assets.synthetic import OPERATIONS, REGIONS, example
from trainer.data.batch import encode_inputs, pad
from trainer.data.tokenizer import load_tokenizer
from trainer.inference import griffin
from trainer.models import causal
from trainer.models.family import Family, family_of
from trainer.paths import model_location
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


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
"""--clock: elapsed time, or this process's CPU time (with OMP_NUM_THREADS=1 the compute time alone, which other
processes' load on a shared machine leaves nearly untouched, though not their use of caches and memory)."""


@torch.no_grad()
def decode_seconds(model, ids, new_tokens, rho, selector: str = "flocking", clock=time.perf_counter) -> float:
    kwargs = dict(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                  max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=0)
    window = 2 if family_of(model.config) == Family.SEQ2SEQ else None  # a causal LM's statistic is the prefill's
    started = clock()
    if rho < 1:
        griffin.generate(model, rho, window, selector, **kwargs)
    else:
        model.generate(**kwargs)
    return clock() - started


def run_speed(args):
    if args.family == "causal":
        model = make_causal_model(args.shape)
    else:
        model = make_model(args.shape, args.ff, vocab=T5_VOCAB if args.shape == "base" else VOCAB).eval()
    for batch in (1, 16):
        ids = torch.randint(FIRST, model.config.vocab_size, (batch, 32), generator=torch.Generator().manual_seed(0))
        for rho in (1.0, 0.5, 0.25):
            clock = CLOCKS[args.clock]
            decode_seconds(model, ids, 4, rho, args.selector, clock)  # warm-up
            per_token = min((decode_seconds(model, ids, 1 + args.new_tokens, rho, args.selector, clock)
                             - decode_seconds(model, ids, 1, rho, args.selector, clock)) / args.new_tokens
                            for _ in range(args.repeats))
            print(json.dumps({"family": args.family, "shape": args.shape,
                              **({"ff": args.ff} if args.family == "seq2seq" else {}), "batch": batch, "rho": rho,
                              "selector": args.selector if rho < 1 else "full",
                              "threads": torch.get_num_threads(), "clock": args.clock,
                              "ms_per_token": round(1000 * per_token, 2)}),
                  flush=True)


FF_SHAPES = {name: (T5_SHAPES[f"t5-{name}"].d_model, T5_SHAPES[f"t5-{name}"].d_ff) for name in ("base", "large", "xl")}
"""(d_model, d_ff) of T5 v1.1 base, large and XL, from trainer/perf/shapes.py."""
CAUSAL_FF_SHAPES = {"qwen2-0.5b": (896, 4864), "llama-3.2-1b": (2048, 8192)}
"""(hidden_size, intermediate_size) of Qwen2-0.5B and Llama-3.2-1B (their config.json files)."""
TINY_FF_SHAPE = {"tiny": (64, 256)}
"""--ff_shape tiny: a layer small enough for a test."""


@torch.no_grad()
def run_ff_speed(args):
    """One gated FF layer at one decoding step (T = 1): full against GRIFFIN's pruned path.

    Less noisy than whole-model decoding on a shared machine, and it isolates what GRIFFIN changes.
    """
    from transformers.models.t5.modeling_t5 import T5DenseGatedActDense

    shapes = {**(CAUSAL_FF_SHAPES if args.family == "causal" else FF_SHAPES), **TINY_FF_SHAPE}
    for name in args.ff_shape or [n for n in shapes if n != "tiny"]:
        d, dff = shapes[name]
        if args.family == "causal":
            dense = LlamaMLP(LlamaConfig(hidden_size=d, intermediate_size=dff)).eval()
        else:
            dense = T5DenseGatedActDense(T5Config(d_model=d, d_ff=dff, feed_forward_proj="gated-gelu",
                                                  dropout_rate=0.0)).eval()
        for batch in (1, 16):
            x = torch.randn(batch, 1, d)
            for rho in (1.0, 0.5, 0.25):
                if args.family == "causal":
                    ff = griffin.GriffinMLP(dense, rho, selector=args.selector)
                    ff(torch.randn(batch, 8, d))  # the prefill: full MLP, statistic, selection
                else:
                    ff = griffin.GriffinFF(dense, rho, window=1, selector=args.selector)
                    ff(x)  # the window step: full FF, statistic, then selection on the next call
                call = (lambda: dense(x)) if rho == 1 else (lambda: ff(x))
                call()
                best = float("inf")
                for _ in range(args.repeats):
                    started = CLOCKS[args.clock]()
                    for _ in range(args.calls):
                        call()
                    best = min(best, (CLOCKS[args.clock]() - started) / args.calls)
                print(json.dumps({"family": args.family, "ff_shape": name, "d_model": d, "d_ff": dff,
                                  "batch": batch, "rho": rho, "selector": args.selector if rho < 1 else "full",
                                  "path": "full" if rho == 1 else ("shared" if ff.shared else "per-example"),
                                  "threads": torch.get_num_threads(), "clock": args.clock,
                                  "us_per_call": round(1e6 * best, 1)}),
                      flush=True)


# Causal LMs: GRIFFIN's statistic over the prefill.

CAUSAL_SHAPES = {"tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                              head_dim=16, vocab_size=59),
                 "base": dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12,
                              head_dim=64, vocab_size=32000)}
"""'tiny': the shipped small Llama's shape; 'base': a Llama of T5-base's widths and depth (one stack of 12)."""


def make_causal_model(shape: str, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(**CAUSAL_SHAPES[shape], max_position_embeddings=1024, tie_word_embeddings=True,
                         pad_token_id=0, eos_token_id=1, bos_token_id=None)
    return LlamaForCausalLM(config).eval()


def instructed_set(tokenizer, n: int, seed: int = 7) -> tuple[list[str], list[str], dict]:
    """n instructed examples, the operations in turn: (operations, answers, batch with labels)."""
    rng = random.Random(seed)
    operations = [OPERATIONS[i % len(OPERATIONS)] for i in range(n)]
    pairs = [example(rng, op, rng.choice(REGIONS)) for op in operations]
    inputs, _ = encode_inputs([f"{op} : {source}" for op, (source, _) in zip(operations, pairs)], tokenizer, 10_000,
                              bos=True)
    labels, _ = encode_inputs([target for _, target in pairs], tokenizer, 10_000)
    ids, mask = pad(inputs, tokenizer.pad_token_id)
    return operations, [target for _, target in pairs], {"input_ids": ids, "attention_mask": mask,
                                                         "labels": pad(labels, -100)[0]}


@torch.no_grad()
def answer_statistic(model, b) -> list[torch.Tensor]:
    """Per MLP layer, (batch, d_ff): the flocking statistic over the gold answer's positions of a teacher-forced
    forward. Added to the prefill's, it makes the 'oracle' row: a statistic no inference can have, which
    tells whether the neurons the answer needs are visible in the prompt."""
    inputs = []
    hooks = [layer.mlp.register_forward_pre_hook(lambda module, args: inputs.append(args[0]))
             for layer in griffin.causal_mlp_slots(model)]
    try:
        embeds, mask, positions, _ = causal.sequence(model, no_prompt, b["input_ids"], b["attention_mask"], b["labels"])
        model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=False)
    finally:
        for hook in hooks:
            hook.remove()
    answer = mask.clone()
    answer[:, : b["input_ids"].shape[1]] = 0  # the answer's columns only
    stats = []
    for layer, x in zip(griffin.causal_mlp_slots(model), inputs):
        z = griffin.GriffinMLP(layer.mlp, 1.0).activations(x).float()
        stats.append(((z / z.norm(dim=-1, keepdim=True)).pow(2) * answer[..., None]).sum(1))
    return stats


@torch.no_grad()
def causal_quality(model, tokenizer, operations, answers, b, rho, selector, seeded=None) -> dict:
    """Greedy exact match (overall and per operation) and token accuracy of the answer; NLL per answer token
    after the first, teacher-forced from the prefill's KV cache (one call: GRIFFIN's pruned path).
    seeded: per layer, a statistic the prefill's is added to (the oracle row)."""
    @contextlib.contextmanager
    def pruning():
        if rho == 1:
            yield
            return
        with griffin.griffin(model, rho, None, 1, selector) as wrappers:
            for wrapper, stat in zip(wrappers, seeded or []):
                wrapper.stat = stat.clone()  # the prefill adds its own to it, then selects
            yield

    labels = b["labels"]
    with pruning():
        embeds, mask, positions, _ = causal.sequence(model, no_prompt, b["input_ids"], b["attention_mask"])
        prefill = model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=True,
                        logits_to_keep=1)
        real = (labels[:, :-1] != -100).to(mask.dtype)  # answer tokens fed after the prefill
        steps = real.shape[1]
        logits = model(input_ids=labels[:, :-1].clamp(min=0), attention_mask=torch.cat([mask, real], 1),
                       position_ids=mask.sum(1, keepdim=True) + torch.arange(steps), use_cache=True,
                       past_key_values=prefill.past_key_values).logits  # (batch, T - 1, V): predict tokens 1..
    nll = F.cross_entropy(logits.flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)
    with pruning():
        out, _ = causal.generate(model, no_prompt, {"input_ids": b["input_ids"], "attention_mask": b["attention_mask"]},
                                 labels.shape[1] + 1, False)
    texts = [t.strip() for t in tokenizer.batch_decode(out, skip_special_tokens=True)]
    width = max(out.shape[1], labels.shape[1])
    gold, pred = F.pad(labels.clamp(min=0), (0, width - labels.shape[1])), F.pad(out, (0, width - out.shape[1]))
    scored = F.pad(labels != -100, (0, width - labels.shape[1]))
    hits = [text == answer for text, answer in zip(texts, answers)]
    per_operation = {op: round(100 * sum(h for h, o in zip(hits, operations) if o == op)
                               / max(1, operations.count(op)), 1) for op in OPERATIONS}
    return {"nll_after_first": round(float(nll), 4), "exact_match": round(100 * sum(hits) / len(hits), 2),
            "token_accuracy": round(100 * float((pred == gold)[scored].float().mean()), 2),
            "exact_match_per_operation": per_operation}


def run_causal_quality(args):
    location = model_location(args.model)
    model = AutoModelForCausalLM.from_pretrained(location).eval().requires_grad_(False)
    tokenizer = load_tokenizer(location)
    operations, answers, b = instructed_set(tokenizer, args.eval_examples)
    common = {"family": "causal", "model": args.model}
    full = causal_quality(model, tokenizer, operations, answers, b, 1.0, "flocking")
    print(json.dumps({**common, "d_ff": model.config.intermediate_size, "rho": 1.0, "selector": "full", **full}),
          flush=True)
    oracle = answer_statistic(model, b)
    for rho in (0.5, 0.25):
        for selector, seeded in [*((name, None) for name in griffin.SELECTORS), ("oracle", oracle)]:
            q = causal_quality(model, tokenizer, operations, answers, b, rho, "flocking" if seeded else selector,
                               seeded)
            delta = round(q["nll_after_first"] - full["nll_after_first"], 4)
            print(json.dumps({**common, "rho": rho, "selector": selector, **q, "delta_nll": delta}), flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=("quality", "speed", "ffspeed"))
    p.add_argument("--family", choices=("seq2seq", "causal"), default="seq2seq",
                   help="seq2seq: T5's decoder FF; causal: a Llama's MLPs, statistic over the prefill")
    p.add_argument("--ff", choices=("gated", "plain"), default="gated", help="T5's FF block")
    p.add_argument("--out", help="quality (T5): save/reuse the trained model here")
    p.add_argument("--model", default="tiny-pretrained-causal", help="quality (causal): the model to measure")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--eval_examples", type=int, default=256)
    p.add_argument("--window", type=int, default=2)
    p.add_argument("--shape", choices=("tiny", "base"), default="base")
    p.add_argument("--ff_shape", action="append", help="ffspeed: a layer shape (repeat; 'tiny' for a test); "
                   "default: every real one of the family")
    p.add_argument("--new_tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--calls", type=int, default=50, help="ffspeed: calls per timed repeat")
    p.add_argument("--clock", choices=tuple(CLOCKS), default="wall", help="speed, ffspeed: what is timed")
    p.add_argument("--selector", choices=griffin.SELECTORS, default="flocking",
                   help="speed, ffspeed: a static one takes the shared path (plain linear layers)")
    args = p.parse_args(argv)
    known = {**(CAUSAL_FF_SHAPES if args.family == "causal" else FF_SHAPES), **TINY_FF_SHAPE}
    if set(args.ff_shape or ()) - set(known):
        p.error(f"--ff_shape: known for --family {args.family}: {', '.join(known)}")
    if args.what == "quality":
        (run_causal_quality if args.family == "causal" else run_quality)(args)
    else:
        {"speed": run_speed, "ffspeed": run_ff_speed}[args.what](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
