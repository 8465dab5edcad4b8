"""Pictures of a run: PNGs drawn from metrics.jsonl into run_dir/plots/ (and optionally TensorBoard).

Every figure is FIGSIZE at DPI (1000 x 500 pixels). Figures are built as bare `Figure` objects rendered
by Agg on save, so neither pyplot's global backend nor its figure registry is touched and nothing stays
alive after a call. A figure without data is not drawn, and a stale copy of it from an earlier call is
removed: no loss_lr.png before the first logged step, no routing figures with a single prompt (k = 1:
every example goes to prompt 0), no eval.png or routing_tables.png before the first evaluation, no
step_times.png from runs that logged no step times.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

FIGSIZE, DPI = (10, 5), 100
MAX_TABLES = 8  # routing_tables.png panels: the first, the last and evenly spaced evals between
MAX_RANK_LINES = 8  # step_times.png: one line per rank up to this world size, a band beyond


def read_events(path) -> dict[str, list[dict]]:
    """{event kind: events sorted by step}, keeping the last line per (kind, step) (and rank, for events that
    name one).

    metrics.jsonl is appended across resumes, so a step logged before an interruption may be logged
    again after it; the later line is the one the resumed run continued from. A line without "event"
    is a train event (as trainer/monitor/monitor.py writes them). Raises ValueError naming path:line.
    """
    last = {}
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                event = json.loads(line)
            except UnicodeDecodeError:
                raise ValueError(f"{path}:{lineno}: not UTF-8") from None
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(event, dict) or not isinstance(event.get("step"), int):
                raise ValueError(f"{path}:{lineno}: expected a JSON object with an integer 'step'")
            # "rank": several ranks may be named stragglers at one step
            last[(event.get("event", "train"), event["step"], event.get("rank"))] = event
    kinds = {}
    for (kind, step, _), event in sorted(last.items(), key=lambda item: item[0][1]):
        kinds.setdefault(kind, []).append(event)
    return kinds


def plot_loss_lr(train) -> Figure | None:
    """Training loss (top) and learning rate (bottom) against the step."""
    train = [e for e in train if "loss" in e]
    if not train:
        return None
    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    loss_ax, lr_ax = fig.subplots(2, 1, sharex=True)
    steps = [e["step"] for e in train]
    loss_ax.plot(steps, [e["loss"] for e in train], color="C0")
    loss_ax.set(ylabel="training loss", title="training loss and learning rate")
    lr_ax.plot(steps, [e.get("lr", np.nan) for e in train], color="C1")
    lr_ax.set(xlabel="step", ylabel="learning rate")
    return fig


def plot_routing(train, collapses) -> Figure | None:
    """Share of training examples per prompt against the step: clean routing (router logits without
    noise, what evaluation uses) solid, noisy routing (what the training forward used) dashed, one colour
    per prompt; dotted grey lines mark routing_collapse events."""
    k = len(train[-1].get("routing_fraction", ())) if train else 0
    train = [e for e in train if len(e.get("routing_fraction", ())) == k]
    if k < 2:
        return None
    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    ax = fig.subplots()
    steps = [e["step"] for e in train]
    for key, style, name in (("routing_fraction", "-", "clean"), ("noisy_routing_fraction", "--", "noisy")):
        if not any(key in e for e in train):
            continue  # no noisy routing: a method without router noise
        shares = np.array([e.get(key, [np.nan] * k) for e in train])  # (events, k)
        for i in range(k):
            ax.plot(steps, shares[:, i], style, color=f"C{i}", label=f"prompt {i} {name}")
    for n, e in enumerate(collapses):
        ax.axvline(e["step"], color="grey", linestyle=":", label="routing collapse" if n == 0 else None)
    noisy = any("noisy_routing_fraction" in e for e in train)
    title = "training examples per prompt" + (" (solid: clean routing, dashed: noisy)" if noisy else "")
    ax.set(xlabel="step", ylabel="share of examples", ylim=(0, 1), title=title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small")
    return fig


def eval_table(event) -> dict[str, list[float]]:
    """{task: shares per prompt}; a single-task run logs no table, so its one row is routing_fraction."""
    if "routing_table" in event:
        return event["routing_table"]
    tasks = {k.split("/")[0] for k in event if "/" in k}
    return {tasks.pop() if len(tasks) == 1 else "all": event["routing_fraction"]}


def plot_routing_tables(evals) -> Figure | None:
    """Task x prompt routing heatmap of the eval set at each evaluation (at most MAX_TABLES panels:
    first, last and evenly spaced between), each cell annotated with its share, colour scale 0..1."""
    evals = [e for e in evals if len(e.get("routing_fraction", ())) > 1]
    if not evals:
        return None
    picks = sorted(set(np.linspace(0, len(evals) - 1, min(len(evals), MAX_TABLES)).round().astype(int)))
    cols = min(len(picks), MAX_TABLES // 2)
    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    # sharey: the task names label the left column only, instead of running into the next panel.
    axes = fig.subplots(-(-len(picks) // cols), cols, squeeze=False, sharey=True).ravel()
    for ax, i in zip(axes, picks):
        table = eval_table(evals[i])
        shares = np.array(list(table.values()), dtype=float)  # (tasks, k)
        image = ax.imshow(shares, vmin=0, vmax=1, cmap="viridis", aspect="auto")
        for (row, col), v in np.ndenumerate(shares):
            ax.text(col, row, f"{v:.2f}", ha="center", va="center", fontsize=7,
                    color="black" if v > 0.6 else "white")
        ax.set_title(f"step {evals[i]['step']}", fontsize=9)
        ax.set_xticks(range(shares.shape[1]), [f"p{j}" for j in range(shares.shape[1])], fontsize=7)
        ax.set_yticks(range(len(table)), list(table), fontsize=7)
    for ax in axes[len(picks):]:
        ax.set_axis_off()
    fig.colorbar(image, ax=list(axes), label="share of the task's eval examples")
    fig.suptitle("eval-set routing: share of each task's examples per prompt")
    return fig


def plot_eval(evals, tests) -> Figure | None:
    """Every '<task>/<metric>' and 'average' of the evaluations against the step (circles); the final
    test-set evaluation of paper splits, if logged, as stars in the same colour."""
    keys = list(dict.fromkeys(k for e in evals + tests for k, v in e.items()
                              if ("/" in k or k == "average") and isinstance(v, (int, float))))
    if not keys:
        return None
    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    ax = fig.subplots()
    for i, key in enumerate(keys):
        for events, marker, suffix in ((evals, "o-", ""), (tests, "*", " (test)")):
            points = [(e["step"], e[key]) for e in events if key in e]
            if points:
                ax.plot(*zip(*points), marker, color=f"C{i % 10}", ms=8 if suffix else 4, label=key + suffix)
    title = "evaluation (stars: test set)" if tests else "evaluation"
    ax.set(xlabel="step", ylabel="metric (0-100)", title=title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small")
    return fig


def plot_step_times(train, stragglers) -> Figure | None:
    """Each rank's own seconds per step (its waits in collectives left out) against the step: one line per
    rank up to MAX_RANK_LINES ranks; beyond, the median and the min-max band of all ranks, plus a line for
    each rank named a straggler. Dotted lines mark straggler events."""
    train = [e for e in train if e.get("step_time_s")]
    if not train:
        return None
    world = max(len(e["step_time_s"]) for e in train)
    train = [e for e in train if len(e["step_time_s"]) == world]  # a resume on another world size: the last
    steps = [e["step"] for e in train]
    times = np.array([e["step_time_s"] for e in train])  # (events, ranks)
    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    ax = fig.subplots()
    named = sorted({e["rank"] for e in stragglers if e["rank"] < world})
    if world <= MAX_RANK_LINES:
        for rank in range(world):
            ax.plot(steps, times[:, rank], color=f"C{rank % 10}", label=f"rank {rank}")
    else:
        ax.fill_between(steps, times.min(1), times.max(1), color="C0", alpha=0.2, label=f"all {world} ranks (min-max)")
        ax.plot(steps, np.median(times, 1), color="C0", label="median")
        for i, rank in enumerate(named):
            ax.plot(steps, times[:, rank], color=f"C{(i + 1) % 10}", label=f"rank {rank}")
    for n, e in enumerate(stragglers):
        ax.axvline(e["step"], color="grey", linestyle=":", label="straggler named" if n == 0 else None)
        ax.annotate(f"rank {e['rank']}", (e["step"], 1), xycoords=("data", "axes fraction"), fontsize=7,
                    ha="left", va="top", rotation=90, color="grey")
    ax.set(xlabel="step", ylabel="seconds per step", ylim=(0, None),
           title="each rank's own time per step (waits for other ranks left out)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small")
    return fig


def write_plots(run_dir, writer=None) -> list[Path]:
    """Draw loss_lr, routing, routing_tables, eval and step_times PNGs from run_dir/metrics.jsonl into
    run_dir/plots/.

    Returns the paths written. With a TensorBoard SummaryWriter, each figure is also added as the image
    plots/<name> at the last logged step. Raises ValueError naming the line of a malformed metrics.jsonl.
    """
    run_dir = Path(run_dir)
    kinds = read_events(run_dir / "metrics.jsonl")
    train, evals, tests = kinds.get("train", []), kinds.get("eval", []), kinds.get("test", [])
    figures = {"loss_lr": plot_loss_lr(train),
               "routing": plot_routing(train, kinds.get("routing_collapse", [])),
               "routing_tables": plot_routing_tables(evals),
               "eval": plot_eval(evals, tests),
               "step_times": plot_step_times(train, kinds.get("straggler", []))}
    last_step = max((e["step"] for events in kinds.values() for e in events), default=0)
    out_dir, written = run_dir / "plots", []
    out_dir.mkdir(exist_ok=True)
    for name, fig in figures.items():
        path = out_dir / f"{name}.png"
        if fig is None:
            path.unlink(missing_ok=True)
            continue
        fig.savefig(path)
        written.append(path)
        if writer is not None:
            writer.add_figure(f"plots/{name}", fig, global_step=last_step, close=False)
    if writer is not None:
        writer.flush()
    return written
