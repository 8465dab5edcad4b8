"""The accuracy benchmark's report: per-arm figures, the markdown tables, the targets, the dev-curve PNG.

Reads what tools/bench/accuracy.py collected (its results dict: per-run summaries of metrics.jsonl) and
adds what needs no run: analytic inference FLOPs (trainer/perf/flops.py) of each arm on the shipped backbone at
the test set's mean lengths. Routing figures are the clean test routing (the noise-free router, as
evaluation and prediction use it): a sub-task's majority prompt is the one that receives most of its test
examples, and a seed is collapsed when the 4 sub-tasks' majority prompts are fewer than COLLAPSE_BELOW
distinct prompts.
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from transformers import AutoConfig

from tools.bench.accuracy_arms import ARMS
from trainer.config import load_config
from trainer.paths import model_location
from trainer.perf.flops import method_flops
from trainer.perf.shapes import shape_of

COLLAPSE_BELOW = 3
MARKERS = ("<!-- results:start -->", "<!-- results:end -->")


def majority_prompts(table: dict[str, list[float]]) -> dict[str, int]:
    """Each sub-task's majority prompt (the first on ties)."""
    return {task: int(np.argmax(shares)) for task, shares in table.items()}


def routing_verdict(table: dict[str, list[float]] | None) -> dict | None:
    """Distinct majority prompts and collapsed yes/no of one routing table; None for unrouted methods."""
    if table is None:
        return None
    distinct = len(set(majority_prompts(table).values()))
    return {"distinct": distinct, "collapsed": distinct < COLLAPSE_BELOW}


def inference_flops(arm: str, data_dir: Path, backbone: str = "tiny-pretrained") -> float:
    """Analytic FLOPs of one test example under `arm` on `backbone` (either family) at the mixture's mean
    input and target lengths (word-level tokenizer: one token per word, plus </s>)."""
    records = [json.loads(line) for f in sorted(Path(data_dir).glob("*/val.jsonl"))
               for line in f.read_text().splitlines()]
    source = statistics.mean(len(r["input"].split()) + 1 for r in records)
    target = statistics.mean(len(r["target"].split()) + 1 for r in records)
    p = load_config(None, ARMS[arm][0]).prompt
    shape = shape_of(AutoConfig.from_pretrained(model_location(backbone)))
    return method_flops(p.method, shape, source, target, p.num_prompts, p.prompt_length, p.iapt_bottleneck,
                        p.iapt_prompts)


def summarise_arms(results: dict, data_dir: Path, backbone: str = "tiny-pretrained") -> dict:
    """Per arm: test mean and std over seeds, per-seed values, per-task means, plateau, routing, cost."""
    out = {}
    for arm, runs in results["runs"].items():
        ok = [r for r in runs if "failed" not in r]
        row = {"lr": results["chosen_lr"][arm], "seeds": [r["seed"] for r in ok], "failed": len(runs) - len(ok),
               "not_run": sum(r.get("failed") == "not run" for r in runs),
               "flops": inference_flops(arm, data_dir, backbone)}
        if ok:
            avgs = [r["test"]["average"] for r in ok]
            curves = np.array([[a for _, a in r["dev_curve"]] for r in ok])  # (seeds, evaluations)
            quarter = max(1, curves.shape[1] // 4)
            row.update(mean=statistics.mean(avgs), std=statistics.stdev(avgs) if len(avgs) > 1 else 0.0,
                       per_seed=avgs, dev_final=float(curves[:, -1].mean()),
                       # dev average gained over the last quarter of the evaluations, mean over seeds
                       plateau_gain=float(curves[:, -1].mean() - curves[:, -1 - quarter].mean()),
                       plateau_from=ok[0]["dev_curve"][-1 - quarter][0],
                       tasks={k: statistics.mean(r["test"][k] for r in ok) for k in ok[0]["test"] if k != "average"},
                       s_per_step=statistics.median(r["s_per_step"] for r in ok),
                       peak_memory_mb=max(r["peak_memory_mb"] for r in ok),
                       trainable_params=ok[0]["trainable_params"],
                       routing=[routing_verdict(r["routing_table"]) for r in ok])
        out[arm] = row
    return out


def _collapsed(row: dict) -> str:
    verdicts = [v for v in row.get("routing", []) if v is not None]
    if not verdicts:
        return "n/a"
    return f"{sum(v['collapsed'] for v in verdicts)} / {len(verdicts)}"


def results_table(results: dict) -> str:
    """One table of quality and cost, one row per arm."""
    head = ["arm", "lr (dev)", "test EM mean ± std", "per seed", "dev EM (final)", "dev gain, last quarter",
            "collapsed seeds", "s / step", "peak MB", "trainable params", "inference kFLOPs / example"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for arm, row in results["summary"].items():
        if "mean" not in row:
            why = "not run (time budget)" if row["not_run"] == row["failed"] else "all runs failed"
            lines.append(f"| {arm} | — | {why} |" + " |" * (len(head) - 3))
            continue
        missing = f" ({len(row['seeds'])} of {row['failed'] + len(row['seeds'])} seeds)" if row["failed"] else ""
        cells = [f"{row['lr']:g}", f"**{row['mean']:.1f}** ± {row['std']:.1f}{missing}",
                 " / ".join(f"{a:.1f}" for a in row["per_seed"]), f"{row['dev_final']:.1f}",
                 f"{row['plateau_gain']:+.1f} (from step {row['plateau_from']})", _collapsed(row),
                 f"{row['s_per_step']:.3f}", f"{row['peak_memory_mb']:.0f}", f"{row['trainable_params']:,}",
                 f"{row['flops'] / 1e3:,.1f}" if row["flops"] is not None else "n/a"]
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def task_table(results: dict) -> str:
    rows = {a: r for a, r in results["summary"].items() if "tasks" in r}
    if not rows:
        return "(no finished arm)"
    tasks = list(next(iter(rows.values()))["tasks"])
    lines = ["| arm | " + " | ".join(t.split("/")[0].split(":")[-1] for t in tasks) + " |", "|---|" + "---:|" * len(tasks)]
    lines += [f"| {a} | " + " | ".join(f"{r['tasks'][t]:.1f}" for t in tasks) + " |" for a, r in rows.items()]
    return "\n".join(lines)


def sweep_table(results: dict) -> str:
    """Final dev average of each learning rate on the sweep seed; the chosen one in bold."""
    lines = ["| arm | final dev EM by learning rate (seed %d) |\n|---|---|" % results["settings"]["seeds"][0]]
    for arm, sweep in results["sweeps"].items():
        cells = []
        for s in sweep:
            text = ("not run" if s["failed"] == "not run" else "failed") if "failed" in s else f"{s['dev_final']:.1f}"
            complete = all("failed" not in x for x in sweep)
            bold = "**" if complete and s["lr"] == results["chosen_lr"][arm] else ""
            cells.append(f"{bold}{s['lr']:g}: {text}{bold}")
        lrs = [x["lr"] for x in sweep]
        edge = complete and len(lrs) > 1 and results["chosen_lr"][arm] in (min(lrs), max(lrs))
        lines.append(f"| {arm} | " + ", ".join(cells) + (" (best still at an end of the grid)" if edge else "") + " |")
    return "\n".join(lines)


def routing_tables(results: dict) -> str:
    """Per routed arm, one row per seed: each sub-task's clean test shares over the prompts (its majority
    prompt in bold), the distinct majority prompts, collapsed or not."""
    out = []
    for arm, runs in results["runs"].items():
        ok = [r for r in runs if "failed" not in r and r["routing_table"]]
        if not ok:
            continue
        tasks = list(ok[0]["routing_table"])
        out += [f"**{arm}** (lr {results['chosen_lr'][arm]:g}; shares of each sub-task's test examples sent to "
                f"prompts 0-3):\n", "| seed | " + " | ".join(t.split(":")[-1] for t in tasks)
                + " | distinct majority prompts | collapsed |", "|---|" + "---|" * len(tasks) + "---:|---|"]
        for r in ok:
            majority, verdict = majority_prompts(r["routing_table"]), routing_verdict(r["routing_table"])
            cells = [" ".join(f"**{s:.2f}**" if j == majority[t] else f"{s:.2f}"
                              for j, s in enumerate(r["routing_table"][t])) for t in tasks]
            out.append(f"| {r['seed']} | " + " | ".join(cells) + f" | {verdict['distinct']} | "
                       + ("**yes**" if verdict["collapsed"] else "no") + " |")
        out.append("")
    return "\n".join(out) or "(no finished routed arm)"


def targets(results: dict) -> str:
    """The issue's targets, judged on the default SMoP arm, as plain sentences."""
    s = results["summary"]
    default = results["settings"]["default_arm"]
    if "mean" not in s.get(default, {}):
        return f"The default arm {default} has no finished runs: no verdict."
    d = s[default]
    lines = []
    pts = {a: s[a]["mean"] for a in ("prompt-tuning-5", "prompt-tuning-20") if "mean" in s.get(a, {})}
    if pts:
        gap = min(d["mean"] - m for m in pts.values())
        vs = ", ".join(f"{a} {m:.1f}" for a, m in pts.items())
        lines.append(f"- SMoP 4×5 ({default}) {d['mean']:.1f} vs {vs}: the smallest gap is {gap:+.1f} points; "
                     f"target (≥ +10 over both) **{'met' if gap >= 10 else 'not met'}**.")
    collapsed = [seed for seed, v in zip(d["seeds"], d["routing"]) if v and v["collapsed"]]
    lines.append(f"- Collapsed seeds of {default}: {collapsed or 'none'} of {d['seeds']}; target (none) "
                 f"**{'met' if not collapsed else 'not met'}**.")
    for other in ("iapt", "full-finetune"):
        if "mean" in s.get(other, {}):
            lines.append(f"- Gap to {other}: {d['mean'] - s[other]['mean']:+.1f} points "
                         f"({default} {d['mean']:.1f} vs {s[other]['mean']:.1f}).")
    return "\n".join(lines)


def plot_dev_curves(results: dict, png: Path) -> None:
    """Left: dev average vs step per arm at its chosen lr, mean over seeds (band: ± one std). Right: the
    sweep, final dev average vs learning rate per arm (a best value at a grid edge would show here)."""
    fig = Figure(figsize=(14, 6), dpi=100, layout="constrained")
    curves_ax, sweep_ax = fig.subplots(1, 2, width_ratios=[3, 2])
    for i, (arm, runs) in enumerate(results["runs"].items()):
        ok = [r for r in runs if "failed" not in r]
        if not ok:
            continue
        steps = [s for s, _ in ok[0]["dev_curve"]]
        values = np.array([[a for _, a in r["dev_curve"]] for r in ok])
        mean, std = values.mean(0), values.std(0)
        style, color = "-" if i < 10 else "--", f"C{i % 10}"
        curves_ax.plot(steps, mean, style, color=color, marker=".", label=f"{arm} (lr {results['chosen_lr'][arm]:g})")
        curves_ax.fill_between(steps, mean - std, mean + std, color=color, alpha=0.12)
        sweep = [s for s in results["sweeps"][arm] if "failed" not in s]
        sweep_ax.plot([s["lr"] for s in sweep], [s["dev_final"] for s in sweep], style, color=color, marker="o",
                      label=arm)
    curves_ax.set(xlabel="step", ylabel="dev average exact match (%)", ylim=(0, 100),
                  title=f"dev curves, mean over seeds {results['settings']['seeds']} (band: ± 1 std)")
    curves_ax.legend(fontsize=8, loc="lower right")
    sweep_ax.set(xscale="log", xlabel="peak learning rate", ylabel="final dev average exact match (%)",
                 ylim=(0, 100), title=f"learning-rate sweep (seed {results['settings']['seeds'][0]})")
    sweep_ax.grid(alpha=0.3)
    fig.savefig(png)


def write_doc(results: dict, doc: Path, png_name: str) -> None:
    """Replace the part of `doc` between MARKERS (or append it) with the generated results."""
    st = results["settings"]
    block = "\n\n".join([
        MARKERS[0], f"Command: `{results['command']}`",
        f"Settings: {st['steps']} steps of {st['batch']} examples, dev evaluation every {st['eval_every']} "
        f"steps, seeds {st['seeds']} (sweep on seed {st['seeds'][0]}), {st['train_per_task']} training "
        f"records per sub-task (the last 10% are dev), {st['val_per_task']} test records per sub-task.",
        "### Quality and cost (test set, exact match %)", results_table(results),
        "### Per sub-task (test, mean over seeds)", task_table(results),
        "### Targets (generated from the numbers above)", targets(results),
        f"### Dev curves and the sweep\n\n![dev curves]({png_name})", sweep_table(results),
        "### Clean test routing per seed", routing_tables(results), MARKERS[1]])
    text = doc.read_text() if doc.exists() else "# Offline accuracy benchmark\n\n"
    if MARKERS[0] in text and MARKERS[1] in text:
        before, rest = text.split(MARKERS[0], 1)
        text = before + block + rest.split(MARKERS[1], 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    doc.write_text(text)
