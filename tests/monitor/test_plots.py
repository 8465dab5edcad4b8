"""trainer/monitor/plots.py and trainer/cli/plot.py on metrics.jsonl files written here in the trainer's schema."""
import json
import subprocess
import sys

import matplotlib.image
import matplotlib.pyplot as plt
import numpy as np
import pytest

from trainer.cli import plot as plot_command
from trainer.monitor.plots import DPI, FIGSIZE, eval_table, read_events, write_plots
from tests.launch import REPO as ROOT

HEIGHT, WIDTH = FIGSIZE[1] * DPI, FIGSIZE[0] * DPI
TASKS = ("copy", "reverse")


def shares(step, k, offset=0.0):
    """k distinct shares summing to 1 that drift with the step (prompt 0 gains what the others lose)."""
    raw = np.array([1.0 + step / 50 + offset] + [1.0 - 0.2 * i for i in range(1, k)])
    return (raw / raw.sum()).round(4).tolist()


def train_event(step, k, mixture, noisy=True, offset=0.0):
    event = {"event": "train", "step": step, "loss": 3.0 / (1 + step / 20), "lr": 0.3 * min(1, step / 20),
             "elapsed_s": step * 0.1, "routing_fraction": shares(step, k, offset), "routing_entropy": 0.9,
             "routing_cv": 0.1}
    if mixture:
        event["routing_table"] = {t: shares(step + 30 * i, k, offset) for i, t in enumerate(TASKS)}
    if noisy and k > 1:
        event.update(noisy_routing_fraction=shares(step / 2, k, offset), noisy_routing_entropy=0.95,
                     noisy_routing_cv=0.05)
        if mixture:
            event["noisy_routing_table"] = {t: shares(step / 2 + 30 * i, k, offset)
                                            for i, t in enumerate(TASKS)}
    return event


def eval_event(step, k, mixture, kind="eval"):
    event = {"event": kind, "step": step, "split": "val", "num_examples": 200, "eval_s": 1.2,
             "routing_fraction": shares(step, k), "routing_entropy": 0.9, "routing_cv": 0.1}
    if mixture:
        event.update({"copy/exact_match": 40.0 + step / 5, "reverse/exact_match": 20.0 + step / 10,
                      "routing_table": {t: shares(step + 30 * i, k) for i, t in enumerate(TASKS)}})
        event["average"] = (event["copy/exact_match"] + event["reverse/exact_match"]) / 2
    else:
        event["rte/accuracy"] = 50.0 + step / 10
    return event


def write_metrics(run_dir, events, extra_lines=()):
    run_dir.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(e) for e in events] + list(extra_lines)
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return run_dir


def mixture_run(run_dir, offset=0.0):
    """A 2-task mixture with k=4, interrupted after step 60 and resumed from its step-40 checkpoint."""
    events = [{"event": "setup", "step": 0, "method": "smop"}]
    events += [train_event(s, 4, True, offset=offset) for s in range(10, 70, 10)]
    events += [eval_event(s, 4, True) for s in (20, 40)]
    events += [{"event": "routing_collapse", "step": 30, "routing_entropy": 0.02},
               {"event": "resume", "step": 40, "checkpoint": "step-000040"}]
    events += [train_event(s, 4, True, offset=offset) for s in range(50, 110, 10)]  # 50, 60 again
    events += [eval_event(s, 4, True) for s in (60, 100)] + [eval_event(100, 4, True, kind="test")]
    return write_metrics(run_dir, events)


def read_png(path):
    """(height, width, channels) floats in 0..1; asserts the picture is not blank."""
    image = matplotlib.image.imread(path)
    assert image.shape[:2] == (HEIGHT, WIDTH), path
    rgb = (image[..., :3] * 255).round().astype(np.uint32)
    colours = np.unique(rgb[..., 0] << 16 | rgb[..., 1] << 8 | rgb[..., 2])  # one int per colour: fast
    assert len(colours) > 50, f"{path}: too few colours for a drawn figure"
    assert image[..., :3].std() > 0.05, f"{path}: nearly uniform"
    return image


def test_resumed_run_keeps_the_last_event_per_step(tmp_path):
    run = mixture_run(tmp_path / "run")
    lines = (run / "metrics.jsonl").read_text().splitlines()
    resumed = train_event(50, 4, True)
    resumed["loss"] = 123.0  # the post-resume line for step 50 must win over the pre-resume one
    (run / "metrics.jsonl").write_text("\n".join(lines[:-8] + [json.dumps(resumed)] + lines[-8:]) + "\n")
    kinds = read_events(run / "metrics.jsonl")
    assert [e["step"] for e in kinds["train"]] == list(range(10, 110, 10))
    assert [e["loss"] for e in kinds["train"] if e["step"] == 50] == [123.0]
    assert [e["step"] for e in kinds["eval"]] == [20, 40, 60, 100]
    assert set(kinds) == {"setup", "train", "eval", "test", "routing_collapse", "resume"}


def test_mixture_writes_four_real_figures_and_tensorboard_images(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    run = mixture_run(tmp_path / "run")
    writer = SummaryWriter(str(run / "tensorboard"))
    paths = write_plots(run, writer)
    writer.close()
    assert [p.name for p in paths] == ["loss_lr.png", "routing.png", "routing_tables.png", "eval.png"]
    assert all(p.parent == run / "plots" for p in paths)
    for path in paths:
        read_png(path)
    assert plt.get_fignums() == []  # no figure left registered with pyplot

    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    tags = events.Tags()["images"]
    assert sorted(tags) == sorted(f"plots/{p.stem}" for p in paths)
    image = events.Images("plots/routing")[-1]
    assert image.step == 100 and (image.width, image.height) == (WIDTH, HEIGHT)


def test_routing_figure_follows_the_fractions(tmp_path):
    """Two runs that differ only in their routing fractions draw different routing.png (a plot of
    nothing would not), while loss_lr.png, drawn from identical numbers, is the same."""
    a, b = mixture_run(tmp_path / "a"), mixture_run(tmp_path / "b", offset=2.0)
    write_plots(a), write_plots(b)
    routing_a, routing_b = read_png(a / "plots/routing.png"), read_png(b / "plots/routing.png")
    assert np.abs(routing_a - routing_b).max() > 0.5
    assert (routing_a != routing_b).any(axis=-1).mean() > 0.002  # curves moved, not a pixel or two
    assert np.array_equal(read_png(a / "plots/loss_lr.png"), read_png(b / "plots/loss_lr.png"))


def test_more_evals_than_panels(tmp_path):
    events = [train_event(s, 4, True) for s in range(10, 210, 10)]
    events += [eval_event(s, 4, True) for s in range(10, 210, 10)]  # 20 evals -> 8 panels
    run = write_metrics(tmp_path / "run", events)
    assert (run / "plots/routing_tables.png") in write_plots(run)
    read_png(run / "plots/routing_tables.png")


def test_single_task_single_prompt_has_no_routing_figures(tmp_path):
    events = [train_event(s, 1, False) for s in range(10, 60, 10)] + [eval_event(50, 1, False)]
    run = write_metrics(tmp_path / "run", events)
    (run / "plots").mkdir()
    (run / "plots/routing.png").write_bytes(b"stale")  # from an earlier run with k > 1 in this directory
    paths = write_plots(run)
    assert [p.name for p in paths] == ["loss_lr.png", "eval.png"]
    assert sorted(p.name for p in (run / "plots").iterdir()) == ["eval.png", "loss_lr.png"]
    for path in paths:
        read_png(path)


def test_single_task_with_prompts_builds_its_one_row_table(tmp_path):
    events = [train_event(s, 4, False, noisy=False) for s in range(10, 60, 10)]
    events += [eval_event(s, 4, False) for s in (20, 40)]
    run = write_metrics(tmp_path / "run", events)
    assert eval_table(events[-1]) == {"rte": shares(40, 4)}  # the task named by the metric key "rte/accuracy"
    paths = write_plots(run)
    assert [p.name for p in paths] == ["loss_lr.png", "routing.png", "routing_tables.png", "eval.png"]
    for path in paths:
        read_png(path)


@pytest.mark.multiprocess
def test_cli_on_an_interrupted_run_before_any_eval(tmp_path):
    events = [{"event": "setup", "step": 0}] + [train_event(s, 4, True) for s in range(10, 40, 10)]
    run = write_metrics(tmp_path / "run", events)
    other = mixture_run(tmp_path / "other")
    out = subprocess.run([sys.executable, "-m", "trainer.cli.plot", str(run), str(other)],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    printed = out.stdout.split()
    assert printed[:2] == [str(run / "plots/loss_lr.png"), str(run / "plots/routing.png")]
    assert len(printed) == 6 and not (run / "plots/eval.png").exists()
    for path in printed:
        read_png(path)


@pytest.mark.parametrize("case", ["missing", "not_json", "no_step"])
def test_cli_bad_input_is_one_line_exit_2(tmp_path, capsys, case):
    run = tmp_path / "run"
    if case == "not_json":
        write_metrics(run, [train_event(10, 4, True)], extra_lines=['{"event": "train", "st'])
        expected = f"error: {run / 'metrics.jsonl'}:2: not valid JSON"
    elif case == "no_step":
        write_metrics(run, [train_event(10, 4, True), {"event": "eval"}])
        expected = f"error: {run / 'metrics.jsonl'}:2: expected a JSON object with an integer 'step'"
    else:
        run.mkdir()
        expected = f"error: {run / 'metrics.jsonl'}: no such file"
    assert plot_command.main([str(run)]) == 2  # in-process: the subprocess path is tested above
    err = capsys.readouterr().err
    assert err.startswith(expected) and err.count("\n") == 1, err
    assert not (run / "plots").exists()


def timed_run(run_dir, world, slow=(), stragglers=()):
    """Train events carrying each rank's step time (`slow` ranks 3x the others from step 30) and straggler events
    naming `stragglers` at step 50."""
    events = []
    for step in range(10, 110, 10):
        event = train_event(step, 4, False)
        event["step_time_s"] = [0.1 + 0.01 * rank + (0.2 if rank in slow and step >= 30 else 0.0)
                                for rank in range(world)]
        events.append(event)
    events += [{"event": "straggler", "step": 50, "rank": r, "host": f"node{r}", "step_time_s": 0.3,
                "others_median_s": 0.1, "ratio": 3.0, "factor": 1.5, "patience": 3} for r in stragglers]
    return write_metrics(run_dir, events)


def test_step_times_figure_follows_each_ranks_time(tmp_path):
    """Drawn from step_time_s; a slow rank moves its curve (a plot of nothing would not); runs whose events
    carry no step times (older runs) draw no step_times.png."""
    calm, slow = timed_run(tmp_path / "calm", 2), timed_run(tmp_path / "slow", 2, slow=(1,), stragglers=(1,))
    assert [p.name for p in write_plots(slow)][-1] == "step_times.png"
    write_plots(calm)
    a, b = read_png(calm / "plots/step_times.png"), read_png(slow / "plots/step_times.png")
    assert (a != b).any(axis=-1).mean() > 0.002
    assert not (mixture_run(tmp_path / "old") / "plots/step_times.png").exists()


def test_step_times_of_many_ranks_keep_every_named_straggler(tmp_path):
    """Beyond 8 ranks: a band, the median and the named ranks; two ranks named at one step are both kept."""
    run = timed_run(tmp_path / "run", 12, slow=(3, 7), stragglers=(3, 7))
    assert [e["rank"] for e in read_events(run / "metrics.jsonl")["straggler"]] == [3, 7]
    assert (run / "plots/step_times.png") in write_plots(run)
    read_png(run / "plots/step_times.png")
