"""Trainable parameters and inference FLOPs of each method on T5 v1.1 LM-adapted base/large/XL/XXL, or with
`--family causal` on the decoder-only LMs of the shape table (Llama 3.x, Qwen2.5, Mistral, Gemma).

    smop-count                                       # parameter table, FLOP table at several input lengths
    smop-count --source-lens 100 250 --target-len 2
    smop-count --family causal                       # the same over trainer/perf/shapes.py's CAUSAL_SHAPES

Nothing is downloaded or allocated: the T5 backbones are built on the meta device from the shape table of
trainer/perf/shapes.py (google/t5-{base,large,xl,xxl}-lm-adapt), a causal LM's weights are counted from its
shape (`CausalShape.params`), the methods' modules are built on the meta device, and FLOPs come from
trainer/perf/flops.py's analytic count (a causal LM's: prompt + input + target in one sequence, the
vocabulary projection over the target only).
"""
from __future__ import annotations

import argparse

import torch
from transformers import T5Config, T5ForConditionalGeneration

from trainer.methods.iapt import IAPT
from trainer.methods.ptuning import PromptEncoder
from trainer.methods.smop import SMoP
from trainer.perf.flops import method_flops
from trainer.perf.shapes import CAUSAL_SHAPES, T5_SHAPES, CausalShape, T5Shape

# (label, method, k, l): the paper's comparison and the baselines of docs/method.md §3-§6.
METHODS = [("SMoP 4x5", "smop", 4, 5), ("prompt tuning 5", "prompt_tuning", 1, 5),
           ("prompt tuning 20", "prompt_tuning", 1, 20), ("prompt tuning 100", "prompt_tuning", 1, 100),
           ("P-tuning MLP 20", "ptuning", 1, 20), ("IAPT m=32", "iapt", 1, 4), ("full fine-tuning", "full_finetune", 1, 0)]

SHAPES = {"seq2seq": T5_SHAPES, "causal": CAUSAL_SHAPES}
"""--family: the table its columns come from (the names of trainer/models/family.py's families)."""


def config(name: str) -> T5Config:
    """The transformers config of a T5 in the shape table (output layer tied: `backbone_params` adds the
    v1.1 checkpoints' own head)."""
    s: T5Shape = T5_SHAPES[name]
    return T5Config(vocab_size=s.vocab_size, d_model=s.d_model, d_ff=s.d_ff, d_kv=s.d_kv, num_heads=s.num_heads,
                    num_layers=s.num_layers, num_decoder_layers=s.num_decoder_layers,
                    feed_forward_proj="gated-gelu" if s.gated else "relu")


def backbone_params(name: str, shape: T5Shape | CausalShape) -> int:
    """Every weight of the backbone: what full fine-tuning trains."""
    if isinstance(shape, CausalShape):
        return shape.params
    # v1.1 shares one embedding between encoder and decoder but has its own output layer. In transformers 5,
    # tie_word_embeddings=False unties the encoder and decoder embeddings as well, so count the tied model
    # (on the meta device: shapes only, no memory) and add the head.
    with torch.device("meta"):
        model = T5ForConditionalGeneration(config(name))
    return sum(p.numel() for p in model.parameters()) + shape.vocab_size * shape.d_model


def trainable_params(name: str, shape: T5Shape | CausalShape, method: str, k: int, l: int) -> int:
    """Built on the meta device from the trainer's own modules: shapes only, no memory. IAPT has a generator
    per layer that carries the prompt: a T5's encoder layers, a causal LM's layers (`num_layers` of both)."""
    if method == "full_finetune":
        return backbone_params(name, shape)
    with torch.device("meta"):
        if method == "iapt":
            module = IAPT(shape.d_model, shape.num_layers, bottleneck=32)
        else:
            encoder = PromptEncoder(shape.d_model, 128, "mlp") if method == "ptuning" else None
            module = SMoP(shape.d_model, k, l, encoder=encoder)
    return sum(p.numel() for p in module.parameters())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=sorted(SHAPES), default="seq2seq",
                        help="seq2seq: T5 v1.1 base to XXL; causal: the decoder-only LMs of the shape table")
    parser.add_argument("--source-lens", type=int, nargs="+", default=[64, 128, 256, 407],
                        help="input tokens per example (prompt positions are added on top)")
    parser.add_argument("--target-len", type=int, default=2, help="target tokens: a label word and </s>")
    args = parser.parse_args(argv)
    shapes = SHAPES[args.family]

    print("## Trainable parameters\n")
    print("| method | " + " | ".join(shapes) + " |\n|---|" + "---:|" * len(shapes))
    for label, method, k, l in METHODS:
        counts = [trainable_params(name, shape, method, k, l) for name, shape in shapes.items()]
        print(f"| {label} | " + " | ".join(f"{c:,}" for c in counts) + " |")

    print(f"\n## Inference GFLOPs per example (target {args.target_len} tokens)\n")
    for name, shape in shapes.items():
        print(f"### {name}\n\n| method | " + " | ".join(f"S={s}" for s in args.source_lens) + " |")
        print("|---|" + "---:|" * len(args.source_lens))
        flops = {label: [method_flops(method, shape, s, args.target_len, k, l) for s in args.source_lens]
                 for label, method, k, l in METHODS}
        for label, row in flops.items():
            print(f"| {label} | " + " | ".join(f"{f / 1e9:.2f}" for f in row) + " |")
        change = [100 * (a / b - 1) for a, b in zip(flops["SMoP 4x5"], flops["prompt tuning 100"])]
        print("| SMoP 4x5 vs prompt tuning 100 | " + " | ".join(f"{c:+.1f}%" for c in change) + " |\n")


if __name__ == "__main__":
    main()
