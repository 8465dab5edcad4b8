"""Offline accuracy benchmark: the methods on the instruction-free mixture, each at its own dev-chosen
learning rate, several seeds, quality and cost in one table (docs/benchmark-accuracy.md; on the causal
family docs/benchmark-accuracy-causal.md).

    python -m tools.bench.accuracy --jobs 2 --doc docs/benchmark-accuracy.md
    python -m tools.bench.accuracy --family causal --jobs 2 --work runs/accuracy-bench-causal \
        --arms smop-kmeans prompt-tuning-5 prompt-tuning-20 iapt full-finetune smop-paper ptuning \
        --doc docs/benchmark-accuracy-causal.md

Every run is the real entry point (python trainer/main.py, one rank, ZeRO-3, OMP_NUM_THREADS=1) on the
backbone shipped as `tiny-pretrained` (T5) or `tiny-pretrained-causal` (Llama, --family causal), both
pretrained on the same instructed language, and the four `jsonl:NAME` sub-tasks of tools/assets/synthetic.py with
data.splits=paper: it trains on train.jsonl less a dev set (the last data.dev_fraction of each sub-task),
evaluates on dev every --eval-every steps, and once at the end on val.jsonl as the test set.

1. Sweep: each arm trains on seed 0 at every learning rate of its grid; the rate with the best final dev
   average exact match is chosen (ties: the first in the grid). The test set plays no part in it.
2. Seeds: each arm trains on every --seeds at its chosen rate (seed 0's run is the sweep's).
3. Report (tools/bench/accuracy_report.py): test mean +- std and per-seed values, the clean routing table of
   each seed with its distinct majority prompts, the dev curves (PNG), step time, peak memory, trainable
   parameters and analytic inference FLOPs.

Each finished run leaves summary.json in its folder and is not rerun, so an interrupted benchmark
continues where it stopped and `--report-only` redraws the document from the runs on disk.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

from tools.assets.synthetic import MIXTURE_TASKS, write_mixture
from tools.bench import accuracy_report
from tools.bench.accuracy_arms import ARMS

# ZeRO-3 with every parameter persistent (kept whole on the rank): the shipped ds_configs' code path
# without the per-module gather/release that dominates a tiny model's step on the CPU.
DS_CONFIG = {"zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 100_000_000,
                                   "reduce_bucket_size": 100_000},
             "bf16": {"enabled": False}, "gradient_clipping": 0.0, "steps_per_print": 1_000_000_000}


BACKBONES = {"seq2seq": "tiny-pretrained", "causal": "tiny-pretrained-causal"}
"""The shipped backbone each --family trains on (trainer/assets/)."""


def run_overrides(arm: str, lr: float, seed: int, args, out: Path) -> list[str]:
    work = Path(args.work).resolve()
    return [f"model.name_or_path={BACKBONES[args.family]}", "model.dropout=0", f"data.task={MIXTURE_TASKS}",
            f"data.data_dir={work / 'data'}", "data.splits=paper", "data.max_source_length=32",
            "data.max_target_length=10", "eval.max_new_tokens=8", "eval.batch_size=100",
            f"train.max_steps={args.steps}", f"train.micro_batch_size={args.batch}",
            f"train.eval_every={args.eval_every}", "train.log_every=10", "train.warmup_ratio=0.06",
            f"seed={seed}", f"output_dir={out}", "overwrite=true", f"ds_config={work / 'ds_config.json'}",
            "checkpoint.every=0", "monitor.plots=false", *ARMS[arm][0], f"train.lr={lr}"]


def run_dir(args, arm: str, lr: float, seed: int) -> Path:
    return Path(args.work).resolve() / "runs" / f"{arm}-lr{lr:g}-seed{seed}"


def train(arm: str, lr: float, seed: int, args) -> dict:
    """One run through trainer/main.py (skipped when its summary.json exists); its summary."""
    out = run_dir(args, arm, lr, seed)
    done, overrides = out / "summary.json", run_overrides(arm, lr, seed, args, out)
    if done.exists() and json.loads(done.read_text())["overrides"] == overrides:
        return json.loads(done.read_text())
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    cmd = [sys.executable, str(REPO / "trainer" / "main.py"), *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(out / "train.log", "w") as log:
        code = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
    if code != 0:
        tail = (out / "train.log").read_text()[-2000:]
        summary = {"arm": arm, "lr": lr, "seed": seed, "failed": f"exit {code}: ...{tail}"}
    else:
        summary = {"arm": arm, "lr": lr, "seed": seed, **summarise(out / "metrics.jsonl"), "overrides": overrides}
        done.write_text(json.dumps(summary, indent=1))
    with PRINT_LOCK:
        verdict = summary.get("failed", "").splitlines()[0] if "failed" in summary else (
            f"dev {summary['dev_final']:.1f}, test {summary['test']['average']:.1f}")
        print(f"{arm} lr {lr:g} seed {seed}: {verdict}", flush=True)
    return summary


PRINT_LOCK = threading.Lock()


def summarise(metrics: Path) -> dict:
    """What the report needs from one run's metrics.jsonl."""
    events = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    setup = next(e for e in events if e["event"] == "setup")
    trains = [e for e in events if e.get("event", "train") == "train"]
    devs = [e for e in events if e["event"] == "eval"]
    test = next(e for e in events if e["event"] == "test")
    metric_keys = [k for k in test if k.endswith("/exact_match")] + ["average"]
    return {"method": setup["method"], "trainable_params": setup["trainable_params"],
            "dev_curve": [[e["step"], e["average"]] for e in devs], "dev_final": devs[-1]["average"],
            "test": {k: test[k] for k in metric_keys},
            "routing_table": test.get("routing_table") if len(test["routing_fraction"]) > 1 else None,
            "s_per_step": step_time(trains, {e["step"] for e in devs}),
            "peak_memory_mb": max(e["peak_memory_mb"] for e in trains),
            "collapse_events": [e["step"] for e in events if e["event"] == "routing_collapse"]}


def step_time(trains: list[dict], eval_steps: set[int]) -> float:
    """Seconds per training step from the train events' elapsed_s, leaving out the first interval (start-up)
    and every interval that holds an evaluation (the one starting at an evaluated step)."""
    spans = [(b["elapsed_s"] - a["elapsed_s"], b["step"] - a["step"]) for a, b in zip(trains[1:], trains[2:])
             if a["step"] not in eval_steps]
    return sum(s for s, _ in spans) / sum(n for _, n in spans) if spans else float("nan")


def choose_lr(sweep: dict[float, dict]) -> float:
    """The grid value with the best final dev average (first on ties); failed runs never win."""
    finished = {lr: s for lr, s in sweep.items() if "failed" not in s}
    if not finished:
        return next(iter(sweep))
    return max(finished, key=lambda lr: (finished[lr]["dev_final"], -list(sweep).index(lr)))


def grid_extension(grid: list[float], best: float) -> float | None:
    """The value one grid step past the end of `grid` where `best` sits (the grid's own ratio, one
    significant digit), or None when `best` is inside the grid or the grid has one value."""
    if len(grid) < 2 or best not in (grid[0], grid[-1]):
        return None
    end, inner = (grid[0], grid[1]) if best == grid[0] else (grid[-1], grid[-2])
    return float(f"{end * end / inner:.1g}")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=sorted(BACKBONES), default="seq2seq",
                        help="the backbone family: the shipped small T5 or the shipped small Llama")
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4],
                        help="the first one is also the sweep's seed")
    parser.add_argument("--fixed-lr", type=float, help="train every arm at this learning rate: no sweep")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--eval-every", type=int, default=25, help="steps between dev evaluations")
    parser.add_argument("--batch", type=int, default=32, help="examples per step")
    parser.add_argument("--train-per-task", type=int, default=500, help="training records per sub-task "
                        "(the last 10%% become the dev set)")
    parser.add_argument("--val-per-task", type=int, default=100, help="test records per sub-task")
    parser.add_argument("--jobs", type=int, default=2, help="trainer processes at once (one core each)")
    parser.add_argument("--default-arm", default="smop-kmeans", help="the SMoP arm the targets are judged on")
    parser.add_argument("--work", default="runs/accuracy-bench", help="data and run folders")
    parser.add_argument("--doc", help="write the results into this markdown file (between its result markers)")
    parser.add_argument("--report-only", action="store_true", help="report the runs on disk; train nothing")
    args = parser.parse_args(argv)

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if not args.report_only:  # (a report beside a running benchmark must not rewrite what its runs read)
        (work / "ds_config.json").write_text(json.dumps(DS_CONFIG, indent=2))
        write_mixture(work / "data", 0, args.train_per_task, args.val_per_task)
    grids = {arm: (args.fixed_lr,) if args.fixed_lr else ARMS[arm][1] for arm in args.arms}
    seeds = args.seeds
    with ThreadPoolExecutor(args.jobs) as pool:
        def submit(arm: str, lr: float, seed: int) -> Future:
            return _done(_load(args, arm, lr, seed)) if args.report_only else pool.submit(train, arm, lr, seed, args)

        def sweep(arm: str) -> dict[float, Future]:
            return {lr: submit(arm, lr, seeds[0]) for lr in grids[arm]}

        # Arm by arm, one sweep queued ahead: an arm's seeds are queued as soon as its sweep is done, so
        # the arms listed first finish first (an interrupted benchmark still has whole arms).
        sweeps, chosen, seed_jobs = {}, {}, {}
        queued = {args.arms[0]: sweep(args.arms[0])}
        for i, arm in enumerate(args.arms):
            if i + 1 < len(args.arms):
                queued[args.arms[i + 1]] = sweep(args.arms[i + 1])
            sweeps[arm] = {lr: job.result() for lr, job in queued[arm].items()}
            best = choose_lr(sweeps[arm])
            beyond = grid_extension(list(sweeps[arm]), best) if "failed" not in sweeps[arm][best] else None
            if beyond is not None:  # the best value sits at an end of the grid: one more step past it
                sweeps[arm] = dict(sorted({**sweeps[arm], beyond: submit(arm, beyond, seeds[0]).result()}.items()))
            chosen[arm] = choose_lr(sweeps[arm])
            if any(r.get("failed") == NOT_RUN for r in sweeps[arm].values()):  # unfinished sweep: no rate yet
                seed_jobs[arm] = [_done({"arm": arm, "lr": None, "seed": seed, "failed": NOT_RUN}) for seed in seeds]
            else:
                seed_jobs[arm] = [submit(arm, chosen[arm], seed) for seed in seeds]
        runs = {arm: [job.result() for job in jobs] for arm, jobs in seed_jobs.items()}


    command = "python -m tools.bench.accuracy " + " ".join(argv if argv is not None else sys.argv[1:])
    results = {"command": command, "settings": {k: v for k, v in vars(args).items() if k != "report_only"},
               "grids": grids, "chosen_lr": chosen, "sweeps": {a: list(s.values()) for a, s in sweeps.items()},
               "runs": runs}
    results["summary"] = accuracy_report.summarise_arms(results, work / "data", BACKBONES[args.family])
    (work / "results.json").write_text(json.dumps(results, indent=1))
    print(accuracy_report.results_table(results))
    if args.doc:
        png = Path(args.doc).with_name(Path(args.doc).stem + "-dev.png")
        accuracy_report.plot_dev_curves(results, png)
        accuracy_report.write_doc(results, Path(args.doc), png.name)
    return results


def _load(args, arm: str, lr: float, seed: int) -> dict:
    out = run_dir(args, arm, lr, seed)
    path = out / "summary.json"
    if not path.exists() or json.loads(path.read_text())["overrides"] != run_overrides(arm, lr, seed, args, out):
        return {"arm": arm, "lr": lr, "seed": seed, "failed": NOT_RUN}
    return json.loads(path.read_text())


NOT_RUN = "not run"


def _done(summary: dict) -> Future:
    future = Future()
    future.set_result(summary)
    return future


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


if __name__ == "__main__":
    main()
