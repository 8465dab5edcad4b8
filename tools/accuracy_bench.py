"""Offline accuracy benchmark: does SMoP beat prompt tuning when the data is a mixture of sub-tasks?

    python tools/pretrain_tiny.py --out runs/tiny-pretrained
    python tools/accuracy_bench.py --model runs/tiny-pretrained --seeds 0 1 2 --doc docs/benchmark-accuracy.md

Writes the instruction-free mixture of tools/synthetic.py (copy/reverse/sort/count, each on its own
region of the vocabulary) as the generic `jsonl` task, then tunes the frozen model with each method through
the real entry point (trainer/main.py) at the same steps, batch and data, and reads back from each run's
predictions: per-sub-task exact match, the routing table (share of each sub-task sent to each prompt;
purity = mean over sub-tasks of the largest share), trainable parameters and encoder length. Medians over
seeds. Exit status 0; the numbers are the result, whichever method wins.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tools.synthetic import MIXTURE, mixture_records, subtask_of  # noqa: E402
from tools.pretrain_tiny import same_tokens  # noqa: E402

# name -> overrides. Prompt methods share one learning rate; IAPT's generators and P-tuning's encoder are
# ordinary dense layers and full fine-tuning moves the pretrained weights, so they take the usual smaller ones.
METHODS = {
    "smop-4x5": ["prompt.method=smop", "prompt.num_prompts=4", "prompt.prompt_length=5", "train.lr=0.3"],
    "prompt-tuning-5": ["prompt.method=prompt_tuning", "prompt.num_prompts=1", "prompt.prompt_length=5",
                        "train.lr=0.3"],
    "prompt-tuning-20": ["prompt.method=prompt_tuning", "prompt.num_prompts=1", "prompt.prompt_length=20",
                         "train.lr=0.3"],
    "ptuning-mlp-5": ["prompt.method=ptuning", "prompt.num_prompts=1", "prompt.prompt_length=5", "train.lr=0.003"],
    "iapt-m16": ["prompt.method=iapt", "prompt.iapt_bottleneck=16", "train.lr=0.003"],
    "full-finetune": ["prompt.method=full_finetune", "train.lr=0.001"],
}


def write_data(folder: Path, seed: int, train_per_task: int, val_per_task: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(1000 + seed)
    for split, n in (("train", train_per_task), ("val", val_per_task)):
        with open(folder / f"{split}.jsonl", "w") as f:
            for record in mixture_records(rng, n, split):
                f.write(json.dumps(record) + "\n")


# ZeRO-3 with every parameter persistent (kept whole on each rank): the same code path as the shipped
# ds_configs, without the per-module gather/release that dominates a tiny model's step on the CPU.
DS_CONFIG = {"zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 100_000_000,
                                   "reduce_bucket_size": 100_000},
             "bf16": {"enabled": False}, "gradient_clipping": 0.0, "steps_per_print": 1_000_000_000}


def run_method(name: str, seed: int, args, data_dir: Path, out: Path) -> dict:
    cmd = [sys.executable, str(REPO / "trainer" / "main.py")]
    if args.nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(args.nproc),
               str(REPO / "trainer" / "main.py")]
    cmd += [f"model.name_or_path={args.model}", "model.dropout=0", "data.task=jsonl", f"data.data_dir={data_dir}",
            "data.max_source_length=32", "data.max_target_length=10", "eval.max_new_tokens=8",
            f"train.max_steps={args.steps}", f"train.micro_batch_size={args.batch // args.nproc}",
            "train.eval_every=0", f"train.log_every={args.steps}", "train.warmup_ratio=0.06", f"seed={seed}",
            f"output_dir={out}", "overwrite=true", f"ds_config={data_dir.parent / 'ds_config.json'}",
            *METHODS[name]]
    started = time.time()
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, args.threads // args.nproc))}
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{name} seed {seed} failed:\n{proc.stderr[-3000:]}")
    return summarise(out, data_dir, round(time.time() - started, 1))


def summarise(out: Path, data_dir: Path, seconds: float) -> dict:
    """Per-sub-task exact match and routing shares, from the run's final predictions file."""
    events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    setup = next(e for e in events if e["event"] == "setup")
    final = [e for e in events if e["event"] == "eval"][-1]
    gold = {r["idx"]: r for r in map(json.loads, (data_dir / "val.jsonl").read_text().splitlines())}
    rows = [json.loads(line) for line in (out / f"predictions-jsonl-{final['step']}.jsonl").read_text().splitlines()]
    k = max(r["prompt"] for r in rows) + 1
    accuracy, routing = {}, {}
    for task in MIXTURE:
        mine = [r for r in rows if subtask_of(r["idx"]) == task]
        accuracy[task] = 100.0 * sum(same_tokens(r["prediction"], gold[r["idx"]]["target"])
                                     for r in mine) / len(mine)
        routing[task] = [sum(r["prompt"] == j for r in mine) / len(mine) for j in range(k)]
    lengths = [len(r["input"].split()) + 1 for r in gold.values()]  # one token per word, plus </s>
    return {"accuracy": accuracy, "mean": statistics.mean(accuracy.values()), "routing": routing,
            "purity": statistics.mean(max(shares) for shares in routing.values()),
            "prompts_used": sum(any(routing[t][j] > 0 for t in routing) for j in range(k)),
            "trainable_params": setup["trainable_params"],
            "encoder_length": setup["prompt_positions"] + statistics.mean(lengths), "seconds": seconds,
            "final_loss": [e for e in events if e["event"] == "train"][-1]["loss"]}


def table(results: dict) -> str:
    tasks = list(MIXTURE)
    head = ["method", *tasks, "mean", "routing purity", "trainable params", "encoder length", "s / run"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for name, runs in results.items():
        med = lambda f: statistics.median(f(r) for r in runs)  # noqa: E731
        cells = [f"{med(lambda r, t=t: r['accuracy'][t]):.1f}" for t in tasks]
        cells += [f"**{med(lambda r: r['mean']):.1f}**", f"{med(lambda r: r['purity']):.2f}",
                  f"{runs[0]['trainable_params']:,}", f"{runs[0]['encoder_length']:.1f}",
                  f"{med(lambda r: r['seconds']):.0f}"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def routing_tables(results: dict, seeds: list[int]) -> str:
    """Each routed method's routing table per seed (share of a sub-task's validation examples per prompt)."""
    out = []
    for name, runs in results.items():
        for seed, r in zip(seeds, runs):
            k = len(r["routing"][next(iter(MIXTURE))])
            if k < 2:
                continue
            out.append(f"{name}, seed {seed}:\n")
            out.append("| sub-task | " + " | ".join(f"prompt {j}" for j in range(k)) + " |\n|---|" + "---:|" * k)
            out += [f"| {t} | " + " | ".join(f"{s:.2f}" for s in shares) + " |" for t, shares in r["routing"].items()]
            out.append("")
    return "\n".join(out)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="directory written by tools/pretrain_tiny.py")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=32, help="global batch (examples per step)")
    parser.add_argument("--train-per-task", type=int, default=500)
    parser.add_argument("--val-per-task", type=int, default=50)
    parser.add_argument("--nproc", type=int, default=1, help="ranks per run (ZeRO-3 either way)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads shared by a run's ranks")
    parser.add_argument("--work", default="runs/accuracy-bench", help="data and run directories")
    parser.add_argument("--doc", help="write the results table here (markdown)")
    args = parser.parse_args(argv)

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    (work / "ds_config.json").write_text(json.dumps(DS_CONFIG, indent=2))
    results = {name: [] for name in args.methods}
    for seed in args.seeds:
        data_dir = work / f"data-seed{seed}"
        write_data(data_dir, seed, args.train_per_task, args.val_per_task)
        for name in args.methods:
            r = run_method(name, seed, args, data_dir.resolve(), (work / f"{name}-seed{seed}").resolve())
            results[name].append(r)
            print(f"{name} seed {seed}: mean {r['mean']:.1f} " + json.dumps(r["accuracy"])
                  + f" purity {r['purity']:.2f} ({r['seconds']}s)", flush=True)
    command = "python tools/accuracy_bench.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = table(results)
    print(text)
    (work / "results.json").write_text(json.dumps(results, indent=2))
    if args.doc:
        Path(args.doc).write_text(render_doc(text, routing_tables(results, args.seeds), command))
    return results


def render_doc(text: str, routing: str, command: str) -> str:
    template = (REPO / "docs" / "benchmark-accuracy.md")
    marker_start, marker_end = "<!-- results:start -->", "<!-- results:end -->"
    block = f"{marker_start}\nCommand: `{command}`\n\n{text}\n\n{routing}\n{marker_end}"
    if template.exists() and marker_start in template.read_text():
        before, rest = template.read_text().split(marker_start, 1)
        return before + block + rest.split(marker_end, 1)[1]
    return f"# Offline accuracy benchmark\n\n{block}\n"


if __name__ == "__main__":
    main()
