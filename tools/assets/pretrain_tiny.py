"""Build a small "pretrained" backbone offline: train a random T5 (or, with --family causal, a Llama) briefly on
the instructed synthetic language of tools/assets/synthetic.py and save it, with a word-level sentencepiece
tokenizer trained on the same text, via save_pretrained. Deterministic from --seed (bit for bit with
--threads 1); a few minutes on one core.

    python -m tools.assets.pretrain_tiny --out trainer/assets/tiny-pretrained                  # the shipped T5
    python -m tools.assets.pretrain_tiny --family causal --out trainer/assets/tiny-pretrained-causal
    python trainer/main.py model.name_or_path=tiny-pretrained ...        # then tune it frozen

The causal model reads the trainer's causal format (docs/method.md §10): the instruction's tokens and </s>,
then the answer's tokens and </s>, trained on the answer's tokens only.

Prints the held-out exact match of each instructed operation, so a weak model is visible before anyone
tunes prompts on it.
"""
from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM, T5Config, T5ForConditionalGeneration

from tools.assets.synthetic import OPERATIONS, REGIONS, example, pretraining_pair, vocabulary
from trainer.data.batch import encode_inputs, pad
from trainer.data.tokenizer import train_tokenizer
from trainer.models import causal


def build(tokenizer, d_model: int, layers: int, family: str):
    if family == "causal":
        # The trainer's 'tiny' causal layout (trainer/models/build.py): gated SiLU, rotary positions, tied
        # embeddings, the sentencepiece tokenizer's ids (pad 0, </s> 1, no BOS).
        return LlamaForCausalLM(LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=d_model, intermediate_size=2 * d_model, head_dim=d_model // 4,
            num_attention_heads=4, num_key_value_heads=4, num_hidden_layers=layers, max_position_embeddings=1024,
            tie_word_embeddings=True, pad_token_id=0, eos_token_id=1, bos_token_id=None))
    # The trainer's 'tiny' layout (gated-GELU, tied and rescaled output layer, T5's special ids).
    cfg = T5Config(vocab_size=len(tokenizer), d_model=d_model, d_ff=2 * d_model, d_kv=d_model // 4, num_heads=4,
                   num_layers=layers, num_decoder_layers=layers, feed_forward_proj="gated-gelu",
                   tie_word_embeddings=True, dropout_rate=0.0, pad_token_id=0, eos_token_id=1,
                   decoder_start_token_id=0)
    return T5ForConditionalGeneration(cfg)


def batch(tokenizer, pairs: list[tuple[str, str]]) -> dict:
    """Inputs (the instruction and </s>, right-padded) and labels (the answer and </s>, padded with -100), as
    the trainer's collate makes them: the same tensors feed either family."""
    inputs, _ = encode_inputs([s for s, _ in pairs], tokenizer, 10_000)
    labels, _ = encode_inputs([t for _, t in pairs], tokenizer, 10_000)
    input_ids, mask = pad(inputs, tokenizer.pad_token_id)
    return {"input_ids": input_ids, "attention_mask": mask, "labels": pad(labels, -100)[0]}


def no_prompt(tokens: torch.Tensor, mask: torch.Tensor):
    """The causal family's PromptFn for a bare model: no prompt positions."""
    return tokens.new_zeros(tokens.shape[0], 0, tokens.shape[-1]), mask.new_zeros(mask.shape[0], 0), None


def loss(model, family: str, b: dict) -> torch.Tensor:
    if family == "causal":
        total, count, _ = causal.loss_sum(model, no_prompt, b)
        return total / count
    return model(**b).loss


@torch.no_grad()
def exact_match(model, tokenizer, pairs: list[tuple[str, str]], family: str) -> float:
    model.eval()
    b = batch(tokenizer, pairs)
    if family == "causal":
        out, _ = causal.generate(model, no_prompt, b, 10, False)
    else:
        out = model.generate(input_ids=b["input_ids"], attention_mask=b["attention_mask"], max_new_tokens=10,
                             do_sample=False, num_beams=1)
    texts = tokenizer.batch_decode(out, skip_special_tokens=True)
    model.train()
    return 100.0 * sum(p.strip() == t for p, (_, t) in zip(texts, pairs)) / len(pairs)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="directory to write (save_pretrained layout)")
    parser.add_argument("--family", choices=("seq2seq", "causal"), default="seq2seq",
                        help="seq2seq: a T5 (trainer/assets/tiny-pretrained); causal: a Llama")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="more only on an idle machine: OpenMP spin-waits on busy cores")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    corpus = [pretraining_pair(rng) for _ in range(4000)]
    # Word level: every word of the language is one token, and decoding gives the words back with their
    # spaces, so the trainer's exact match compares decoded text with the target as written.
    tokenizer = train_tokenizer([" ".join(vocabulary())] + [text for pair in corpus for text in pair],
                                word_level=True)
    model = build(tokenizer, args.d_model, args.layers, args.family)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    warmup = args.steps // 20
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.05, (args.steps - s) / (args.steps - warmup))))
    started = time.time()
    for step in range(args.steps):
        value = loss(model, args.family, batch(tokenizer, [pretraining_pair(rng) for _ in range(args.batch)]))
        value.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 100 == 0 or step == args.steps - 1:
            print(f"step {step}: loss {value.item():.4f} ({time.time() - started:.0f}s)", flush=True)

    held_out = random.Random(args.seed + 1)
    report = {op: exact_match(model, tokenizer, [_instructed(held_out, op) for _ in range(100)], args.family)
              for op in OPERATIONS}
    print("held-out exact match (instructed): " + ", ".join(f"{k} {v:.0f}%" for k, v in report.items()))
    out = Path(args.out)
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    (out / "pretraining.json").write_text(json.dumps({**vars(args), "exact_match": report,
                                                      "seconds": round(time.time() - started, 1)}, indent=2))
    return report


def _instructed(rng: random.Random, operation: str) -> tuple[str, str]:
    source, target = example(rng, operation, rng.choice(REGIONS))
    return f"{operation} : {source}", target


if __name__ == "__main__":
    main()
