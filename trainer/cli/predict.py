"""Predict with exported SMoP adapters over one frozen backbone.

    # one device, no DeepSpeed
    smop-predict --backbone google/t5-large-lm-adapt --adapter rte=runs/rte/adapter \
        --task rte --data_dir data/superglue --split val --output preds.jsonl
    # several adapters, a jsonl of {"input": ..., "adapter": ..., "idx": ...} (idx optional)
    smop-predict --backbone DIR --adapter rte=A --adapter cb=B --input inputs.jsonl --output p.jsonl
    # the random 'tiny' backbone of a training run
    smop-predict --backbone tiny --run_dir runs/tiny --adapter runs/tiny/adapter --task rte ...
    # ZeRO-3 inference for a backbone that does not fit one device: every rank generates (synced_gpus),
    # inputs are sharded over ranks and gathered once
    deepspeed --num_gpus 2 --module trainer.cli.predict --ds_config ds_configs/cpu_zero3.json ...

Writes one {"idx", "prediction", "adapter", "prompt"} object per line (trainer/cli/evaluate.py reads it; "prompt"
is the prompt the example's router chose). Bad input: one line on stderr, exit code 2.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from contextlib import nullcontext
from pathlib import Path

import torch
from tqdm import tqdm

from trainer.cli.run_files import load_backbone, read_run, run_ds_config
from trainer.config import ModelConfig
from trainer.inference.adapter import check_backbone, load_adapter, read_adapter_config, tokenizer_path
from trainer.data.batch import encode_inputs, eval_shards, pad
from trainer.inference.griffin import griffin
from trainer.inference.multi_adapter import MultiAdapterModel
from trainer.models.build import backbone_config
from trainer.models.family import Family, family_of
from trainer.data.readers import load_split, read_jsonl_lines
from trainer.data.tasks import get_task
from trainer.data.tokenizer import load_tokenizer
from trainer.paths import shipped_path


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", required=True, help="hub name, save_pretrained dir, or 'tiny' (needs --run_dir)")
    p.add_argument("--run_dir", help="the training run whose 'tiny' backbone to rebuild")
    p.add_argument("--adapter", action="append", required=True, metavar="[NAME=]DIR",
                   help="an exported adapter; repeat for several (NAME defaults to the directory's name)")
    p.add_argument("--input", help="jsonl of {input, adapter, idx}")
    p.add_argument("--task", help="SuperGLUE task name (with --data_dir and --split) instead of --input")
    p.add_argument("--data_dir")
    p.add_argument("--split", default="val")
    p.add_argument("--output", required=True)
    p.add_argument("--tokenizer", help="default: the adapter's (its copy or the name it records)")
    p.add_argument("--mode", choices=("generate", "rank"), default="generate",
                   help="rank: score the task's label words (needs --task with label words)")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--max_new_tokens", type=int, default=8)
    p.add_argument("--max_source_length", type=int, default=512, help="encoder length including the prompt")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--ds_config", help="ZeRO-3 inference: shard the backbone with this DeepSpeed config")
    p.add_argument("--griffin_rho", type=float, default=1.0,
                   help="GRIFFIN: keep this fraction of each FF layer's neurons, per example, after the statistic "
                        "(T5: the decoder's first --griffin_window steps; causal LM: the prefill) "
                        "(1: off; single device only)")
    p.add_argument("--griffin_window", type=int, help="GRIFFIN on T5: decoding steps run with the full FF before "
                   "pruning (default 2); a causal LM takes the statistic over the prefill and refuses it")
    p.add_argument("--gather_backbone", choices=("auto", "always", "never"), default="auto",
                   help="ZeRO-3: gather the whole backbone once for all inputs instead of at every forward and "
                        "decoding step; auto: when it fits on each device")
    p.add_argument("--local_rank", type=int, help=argparse.SUPPRESS)  # passed by the deepspeed launcher
    args = p.parse_args(argv)
    if args.griffin_rho < 1 and (args.ds_config or int(os.environ.get("WORLD_SIZE", "1")) > 1):
        p.error("--griffin_rho < 1 runs on one device only (its pruned FF reads weights that ZeRO-3 partitions)")
    if args.griffin_rho < 1 and args.mode == "rank":
        p.error("--griffin_rho applies to --mode generate")
    if bool(args.input) == bool(args.task):
        p.error("give exactly one of --input or --task")
    if args.task and not args.data_dir:
        p.error("--task needs --data_dir")
    return args


def parse_adapters(specs: list[str]) -> dict[str, str]:
    out = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        name, path = (name, path) if sep else (Path(spec).name, spec)
        if name in out:
            raise ValueError(f"--adapter: name '{name}' given twice; use NAME=DIR to tell them apart")
        out[name] = path
    return out


def read_inputs(args, names: list[str]) -> list[dict]:
    """[{"input", "adapter", "idx"}] from a jsonl file or a task split; errors name file:line."""
    if args.task:
        if len(names) != 1:
            raise ValueError("--task takes one adapter; name adapters per record in an --input jsonl instead")
        examples = load_split(get_task(args.task), args.data_dir, args.split, train=False)
        return [{"input": ex.input, "adapter": names[0], "idx": ex.idx} for ex in examples]
    records = []
    for position, (lineno, record) in enumerate(read_jsonl_lines(args.input)):
        where = f"{args.input}:{lineno}"
        if not isinstance(record.get("input"), str):
            raise ValueError(f"{where}: missing or non-string field 'input'")
        adapter = record.get("adapter", names[0] if len(names) == 1 else None)
        if adapter not in names:
            raise ValueError(f"{where}: adapter {adapter!r} is not loaded (loaded: {', '.join(names)})")
        records.append({"input": record["input"], "adapter": adapter, "idx": record.get("idx", position)})
    return records


def input_format(configs: dict[str, dict]) -> bool:
    """Whether the adapters' inputs were wrapped in the chat template; every adapter must agree."""
    formats = {name: bool(config.get("chat_template", False)) for name, config in configs.items()}
    if len(set(formats.values())) > 1:
        raise ValueError(f"--adapter: the adapters were trained with and without the chat template ({formats}); "
                         "serve them in separate calls")
    return next(iter(formats.values()))


def build(args, adapter_dirs: dict[str, str], zero3: bool):
    """(MultiAdapterModel, tokenizer, distributed helpers or None)."""
    configs = {name: read_adapter_config(path) for name, path in adapter_dirs.items()}
    first = next(iter(adapter_dirs))
    tok_name = args.tokenizer or tokenizer_path(adapter_dirs[first], configs[first]) or args.backbone
    tokenizer = load_tokenizer(tok_name)
    dtype = getattr(torch, args.dtype)
    run_cfg = read_run(args.run_dir) if args.run_dir else None
    dist = None
    if zero3:
        backbone, dist = sharded_backbone(args, run_cfg, len(tokenizer), dtype)
    else:
        backbone = load_backbone(args.backbone, dtype, run_cfg, run_ds_config(args.run_dir) if run_cfg else None,
                                 len(tokenizer))
    for name, path in adapter_dirs.items():
        check_backbone(path, configs[name], backbone.config)
    adapters = {name: load_adapter(path).to(backbone.device if dist is None else dist.device)
                for name, path in adapter_dirs.items()}
    return MultiAdapterModel(backbone, adapters), tokenizer, dist


def sharded_backbone(args, run_cfg, vocab_size: int, dtype):
    """ZeRO-3: build into partitions (as the trainer does, so a 'tiny' backbone gets the same weights)."""
    from trainer.runtime import distributed
    from trainer.runtime.backbone import build_backbone
    from trainer.runtime.ds_config import BatchLayout, load_ds_config, merge_batch

    dist = distributed.init()
    ds = merge_batch(load_ds_config(shipped_path(args.ds_config or "ds_configs/cpu_zero3.json")),
                     BatchLayout(1, 1, dist.world_size))
    if args.backbone == "tiny":
        if run_cfg is None:
            raise ValueError("--backbone tiny needs --run_dir")
        model_cfg = run_cfg.model
    else:
        model_cfg = ModelConfig(name_or_path=args.backbone, dropout=0.0)
    config = backbone_config(model_cfg, vocab_size)
    if args.backbone == "tiny":
        torch.manual_seed(run_cfg.seed)  # as the trainer does right before build_backbone
    backbone = distributed.shard_backbone(build_backbone(model_cfg, config, ds, dtype), ds)
    return backbone.eval(), dist


def run(args) -> int:
    adapter_dirs = parse_adapters(args.adapter)
    zero3 = bool(args.ds_config) or int(os.environ.get("WORLD_SIZE", "1")) > 1
    model, tokenizer, dist = build(args, adapter_dirs, zero3)
    records = read_inputs(args, model.names)
    causal = family_of(model.backbone.config) == Family.CAUSAL
    if causal and args.griffin_window is not None:
        raise ValueError("--griffin_window: a T5 option (its decoder has no prompt to take the statistic over); "
                         "on a causal LM GRIFFIN takes it over the prefill: leave it out")
    chat = input_format({name: read_adapter_config(path) for name, path in parse_adapters(args.adapter).items()})
    ids, truncated = encode_inputs([r["input"] for r in records], tokenizer,
                                   args.max_source_length - model.prompt_length - 1, bos=causal, chat_template=chat)
    adapter_ids = model.adapter_ids([r["adapter"] for r in records])
    started = time.time()
    if dist is None:
        mine = predict_shard(args, model, tokenizer, ids, adapter_ids, dist)
    else:
        from trainer.runtime import distributed  # only here: a single-device run never imports DeepSpeed
        from trainer.runtime.eval_gather import maybe_whole_backbone
        from trainer.runtime.hardware import local_ranks

        force = {"auto": None, "always": True, "never": False}[args.gather_backbone]
        with maybe_whole_backbone(model.backbone, dist.device, local_ranks(dist.world_size), force):
            mine = predict_shard(args, model, tokenizer, ids, adapter_ids, dist)
        mine = [item for part in distributed.all_gather_objects(mine) for item in part]  # the one gather
    if dist is None or dist.is_main:
        write(args.output, records, sorted(mine))
        summarise(records, sorted(mine), truncated, time.time() - started, args.output)
    if dist is not None:
        distributed.barrier()
        distributed.destroy()
        distributed.exit_without_teardown(0)
    return 0


def predict_shard(args, model: MultiAdapterModel, tokenizer, ids, adapter_ids, dist) -> list[tuple[int, str, int]]:
    """(input position, prediction, prompt index) for this rank's share of the inputs."""
    rank, world = (dist.rank, dist.world_size) if dist else (0, 1)
    device = dist.device if dist else model.backbone.device
    words, candidates = label_candidates(args, tokenizer)
    causal = family_of(model.backbone.config) == Family.CAUSAL
    mine = []
    for indices in tqdm(eval_shards(len(ids), rank, world, args.batch_size), disable=rank != 0, desc="predict",
                        unit="batch"):
        rows = indices or [0]  # a placeholder batch keeps every ZeRO-3 rank in the same forward
        input_ids, mask = pad([ids[i] for i in rows], tokenizer.pad_token_id)
        batch = {"input_ids": input_ids.to(device), "attention_mask": mask.to(device)}
        chosen = adapter_ids[rows].to(device)
        if candidates is not None:
            scores, index = model.score_candidates(batch, chosen, candidates)
            texts = [words[j] for j in scores.argmax(-1).tolist()]
        else:
            # A fresh GRIFFIN context per generate call: T5 counts decoding steps from the first, a causal LM
            # takes the first call as the prefill. The window is T5's alone (run refuses it for a causal LM).
            pruned = args.griffin_rho < 1
            window = None if causal else args.griffin_window or 2
            with griffin(model.backbone, args.griffin_rho, window) if pruned else nullcontext():
                out, index = model.generate(batch, chosen, args.max_new_tokens, synced_gpus=world > 1)
            texts = [t.strip() for t in tokenizer.batch_decode(out, skip_special_tokens=True)]
        mine += list(zip(indices, texts, index.tolist()))
    return mine


def label_candidates(args, tokenizer):
    """--mode rank: the task's label words and their target ids (each ending in </s>); else (None, None)."""
    if args.mode != "rank":
        return None, None
    words = get_task(args.task).label_words if args.task else None
    if not words:
        raise ValueError("--mode rank needs --task with label words")
    eos = tokenizer.eos_token_id
    return words, [torch.tensor(tokenizer(w, add_special_tokens=False).input_ids + [eos]) for w in words]


def write(path, records, predicted) -> None:
    assert [i for i, _, _ in predicted] == list(range(len(records))), "every input predicted exactly once"
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for i, text, prompt in predicted:
            r = records[i]
            f.write(json.dumps({"idx": r["idx"], "prediction": text, "adapter": r["adapter"], "prompt": prompt})
                    + "\n")


def summarise(records, predicted, truncated, seconds, path) -> None:
    counts = Counter((records[i]["adapter"], prompt) for i, _, prompt in predicted)
    routing = ", ".join(f"{a}/{p}: {n}" for (a, p), n in sorted(counts.items()))
    print(f"wrote {len(predicted)} predictions to {path} in {seconds:.1f}s "
          f"({len(predicted) / max(seconds, 1e-9):.1f} examples/s); routed {routing}"
          + (f"; {truncated} inputs truncated to max_source_length" if truncated else ""))


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
