"""The training loop (evaluation lives in trainer/evaluation.py)."""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

import torch
from tqdm import tqdm

from trainer.config import RunConfig
from trainer.data.batch import EncodedSplits, collate
from trainer.evaluation import evaluate
from trainer.models.prompted import PromptedModel
from trainer.monitor.monitor import CollapseDetector, Monitor, StragglerDetector, peak_memory_mb, routing_summary
from trainer.runtime import checkpoint, distributed
from trainer.runtime.distributed import Dist
from trainer.runtime.guard import EXIT_COLLAPSE, EXIT_NONFINITE, EXIT_REQUEUE, NonFiniteLoss
from trainer.runtime.steptime import StepClock
from trainer.runtime.update import EngineUpdate, ReplicatedUpdate
from trainer.runtime.watchdog import Watchdog
from trainer.state import TrainState


@dataclass
class Run:
    """Everything the loop needs, built by trainer/main.py: the parts, the training state, the data."""

    cfg: RunConfig
    dist: Dist
    ds_config: dict
    """The DeepSpeed config as merged with the run's batch layout (written beside the run's outputs)."""
    model: PromptedModel
    update: ReplicatedUpdate | EngineUpdate
    """How gradients become an update (trainer/runtime/update.py): the method's replicated parameters with
    their own optimiser, or DeepSpeed's engine when the backbone trains."""
    state: TrainState
    """What a checkpoint saves and restores (trainer/state.py): method, optimiser, schedule, step, guard,
    data order, batch layout."""
    data: EncodedSplits
    tokenizer: object
    task_names: list[str]
    monitor: Monitor
    clock: StepClock
    """This rank's own time per step (its waits in collectives left out), all-gathered at log steps."""
    watchdog: Watchdog
    """Ends a hung run with every rank's stack and last collective written down (runs while training)."""
    collapse: CollapseDetector | None = None
    """Watches the clean routing of routed methods (None: nothing routed to watch)."""
    stragglers: StragglerDetector | None = None
    """Watches every rank's step time (None: one rank, or monitor.straggler_factor=0)."""
    first_step: int = 1
    """The first step this job trains (after a resume: the checkpoint's step + 1), for checkpoint.at_first_step."""
    collapsed: bool = False
    """Set on every rank at the same step when collapse is declared and monitor.stop_on_collapse is on."""
    stats: dict = field(default_factory=dict)
    """What the steps since the last log event add up: loss and token sums, routing counts, the rate."""


def train(run: Run) -> dict:
    """Run to train.max_steps, evaluating every train.eval_every steps and at the end."""
    cfg = run.cfg.train
    reset_stats(run)
    bar = tqdm(total=cfg.max_steps, initial=run.state.step, disable=not run.dist.is_main, desc="train", unit="step")
    started, last_eval = time.time(), {}
    run.first_step = run.state.step + 1
    while run.state.step < cfg.max_steps:
        run.clock.begin()
        train_step(run)
        run.clock.end()
        run.state.step += 1
        run.watchdog.beat(run.state.step)
        bar.update(1)
        poll_guard(run)
        maybe_log(run, bar, started)
        maybe_check_replicas(run)
        if cfg.eval_every and run.state.step % cfg.eval_every == 0 and run.state.step < cfg.max_steps:
            with run.watchdog.paused():  # no steps while evaluating; a stuck collective still counts
                last_eval = evaluate(run)
        if maybe_save(run):
            break
    bar.close()
    if run.state.step < cfg.max_steps:
        return last_eval
    with run.watchdog.paused():
        return evaluate(run)


def train_guarded(run: Run) -> tuple[int | None, dict]:
    """Train with the stop signals caught and the watchdog running: (exit code if it stopped early, else None;
    the last eval). A StorageError (a save the storage refused) goes up to trainer/main.py, which ends every
    rank with exit code 6 whether training or the final writes met it."""
    run.state.guard.install()
    distributed.time_collectives(run.clock)
    run.watchdog.start(run.state.step)
    try:
        result = train(run)
    except NonFiniteLoss as e:
        print(f"\nerror: {e}", file=sys.stderr)  # \n: the progress bar's line is still open
        return _close(run, EXIT_NONFINITE), {}
    finally:
        run.watchdog.stop()
        distributed.time_collectives(None)
        run.state.guard.uninstall()
    if run.collapsed:
        print(f"rank {run.dist.rank}: stopped after step {run.state.step}: routing collapsed (monitor.stop_on_collapse); "
              f"checkpoint saved; exit code {EXIT_COLLAPSE}", file=sys.stderr)
        return _close(run, EXIT_COLLAPSE), result
    if run.state.step < run.cfg.train.max_steps:
        g = run.state.guard
        why = (f"signal {g.signalled}" if g.signalled else f"checkpoint.stop_at={g.stop_at}"
               if g.stop_at and run.state.step >= g.stop_at else "a signal to another rank")
        print(f"rank {run.dist.rank}: stopped after step {run.state.step} by {why}; checkpoint saved; exit code "
              f"{EXIT_REQUEUE}: run the same command to resume", file=sys.stderr)
        return _close(run, EXIT_REQUEUE), result
    return None, result


def _close(run: Run, code: int) -> int:
    run.monitor.close(plots=run.cfg.monitor.plots)  # pictures of the run so far
    distributed.destroy()
    return code


def train_step(run: Run) -> None:
    """One optimiser step over the global batch: accumulate micro batches, all-reduce, update."""
    d, state, k = run.dist, run.state, run.model.method.num_prompts
    rows = state.order.global_indices(state.step)
    noise = distributed.to_device(state.order.noise(state.step, k), d.device)
    micro = state.order.micro_batches(state.step, d.rank, d.world_size, state.layout.micro)
    batches = [collate(run.data.train, [rows[i] for i in m], run.tokenizer.pad_token_id) for m in micro]
    # Normalise by the target tokens of the whole global batch (one scalar all-reduce), so the gradient
    # does not depend on how the batch is split over ranks and micro batches.
    tokens = sum((b["labels"] != -100).sum() for b in batches).float()
    tokens = distributed.all_reduce_sum(distributed.to_device(tokens, d.device))
    run.model.train()
    run.stats["lr"] = state.scheduler.get_last_lr()[0]  # the rate this step uses, logged with its loss
    step_loss, step_tokens = torch.zeros((), device=d.device), torch.zeros((), device=d.device)
    for batch, positions in zip(batches, micro):
        batch = {key: distributed.to_device(value, d.device) for key, value in batch.items()}
        loss_sum, n_tokens, routing = run.model.loss_sum(batch, noise[positions])
        aux = routing.aux_loss / (len(micro) * d.world_size)
        run.update.backward(loss_sum / tokens + aux, len(micro) * d.world_size)
        step_loss += loss_sum.detach()
        step_tokens += n_tokens
        # What the training forward used (noisy) and what evaluation would pick (clean), side by side: the
        # noise flips many choices, so only the clean counts show whether the router itself has collapsed.
        for key, index in (("counts", routing.index), ("clean_counts", routing.clean_index)):
            run.stats[key].index_put_((batch["task_ids"], index), torch.ones_like(index), accumulate=True)
    ok = run.update.step(state.step + 1, step_loss)
    run.stats["loss_sum"] += torch.where(ok, step_loss, 0)  # a skipped step stays out of the logged mean loss
    run.stats["tokens"] += torch.where(ok, step_tokens, 0)


def poll_guard(run: Run) -> None:
    """Learn which steps were skipped and whether to stop: the previous step's flags every step (the host
    does not wait for the step it has just queued), this step's too where it is about to log or save."""
    def on_skip(step: int) -> None:
        run.monitor.log({"event": "nonfinite", "step": step, "skipped_total": run.state.guard.skipped})

    g, step = run.state.guard, run.state.step
    g.poll(step, on_skip)
    if g.stop_requested or log_due(run) or periodic_save_due(run):  # log_due includes the last step
        g.poll(step + 1, on_skip)


def log_due(run: Run) -> bool:
    return run.state.step % run.cfg.train.log_every == 0 or run.state.step == run.cfg.train.max_steps


def periodic_save_due(run: Run) -> bool:
    """checkpoint.every, and the storage probe of checkpoint.at_first_step after this job's first step."""
    every = run.cfg.checkpoint.every
    probe = run.cfg.checkpoint.at_first_step and run.state.step == run.first_step
    return (bool(every) and run.state.step % every == 0) or probe


def maybe_save(run: Run) -> bool:
    """Checkpoint every checkpoint.every steps and after the first step with checkpoint.at_first_step (not
    inside a non-finite streak), at the end, and when stopping; True: stop now. A save that cannot be written
    raises StorageError on every rank."""
    end, stop = run.state.step == run.cfg.train.max_steps, run.state.guard.stop_requested or run.collapsed
    if (periodic_save_due(run) and not run.state.guard.streak) or end or stop:
        first = run.state.step == run.first_step and run.cfg.checkpoint.at_first_step
        reason = ("collapse" if run.collapsed else "signal" if stop else "end" if end else
                  "first_step" if first else "periodic")
        checkpoint.save(run.state, run.dist, checkpoint.checkpoints_dir(run.cfg), run.cfg.checkpoint.keep, reason)
    return stop


def reset_stats(run: Run) -> None:
    device, k = run.dist.device, run.model.method.num_prompts
    run.stats = {"loss_sum": torch.zeros((), device=device), "tokens": torch.zeros((), device=device), "lr": 0.0,
                 "counts": torch.zeros(len(run.task_names), k, dtype=torch.long, device=device),
                 "clean_counts": torch.zeros(len(run.task_names), k, dtype=torch.long, device=device)}


def maybe_log(run: Run, bar, started: float) -> None:
    """Every train.log_every steps: all-reduce loss and routing counts (every rank's examples count),
    all-gather every rank's step time, log.

    routing_* is the clean routing (the logits without training noise: what evaluation and prediction do);
    noisy_routing_* is what the training forward used. The progress bar's balance is the clean one.
    step_time_s: each rank's own seconds per step since the last log event (trainer/runtime/steptime.py)."""
    if not log_due(run):
        return
    s = run.stats
    totals = distributed.all_reduce_sum(torch.stack([s["loss_sum"], s["tokens"].float()]))
    counts = distributed.all_reduce_sum(torch.stack([s["clean_counts"], s["counts"]])).cpu()
    loss = float(totals[0] / totals[1]) if totals[1] > 0 else float("nan")  # every step skipped
    # The only collective of the straggler watch, and only here: steps between log events stay free of it.
    step_times = distributed.all_gather_floats(run.clock.take() or 0.0, run.dist.device)
    event = {"event": "train", "step": run.state.step, "loss": loss, "lr": s["lr"],
             "elapsed_s": round(time.time() - started, 2), "peak_memory_mb": round(peak_memory_mb(run.dist.device), 1),
             "step_time_s": [round(t, 4) for t in step_times], **routing_summary(counts[0], run.task_names)}
    if counts.shape[-1] > 1:
        event.update(routing_summary(counts[1], run.task_names, prefix="noisy_routing_"))
    run.monitor.log(event)
    bar.set_postfix(loss=f"{loss:.4f}", balance=f"{event['routing_entropy']:.2f}")
    reset_stats(run)
    watch_collapse(run, event)
    watch_stragglers(run, event)


def watch_stragglers(run: Run, event: dict) -> None:
    """Name (rank 0) and log a rank whose step time stays monitor.straggler_factor x above the others'
    median for monitor.straggler_patience log events (every rank sees the same all-gathered times)."""
    if run.stragglers is None:
        return
    m = run.cfg.monitor
    for rank, mine, others in run.stragglers.update(event["step_time_s"]):
        host = run.dist.hosts[rank] if rank < len(run.dist.hosts) else "?"
        run.monitor.log({"event": "straggler", "step": run.state.step, "rank": rank, "host": host,
                         "step_time_s": mine, "others_median_s": others, "ratio": round(mine / others, 2),
                         "factor": m.straggler_factor, "patience": m.straggler_patience})
        if run.dist.is_main:
            tqdm.write(f"warning: step {run.state.step}: rank {rank} on {host} is a straggler: {mine:.3f} s per step, "
                       f"{mine / others:.1f}x the other ranks' median {others:.3f} s, for {m.straggler_patience} log "
                       f"events in a row (monitor.straggler_factor={m.straggler_factor:g}); every step waits for it: "
                       "check that node's GPU, CPU load and links (plots/step_times.png)")


def watch_collapse(run: Run, event: dict) -> None:
    """Warn once (rank 0) and log `routing_collapse` when the clean routing stays collapsed; with
    monitor.stop_on_collapse, stop after this step (every rank sees the same all-reduced entropy)."""
    if run.collapse is None or not run.collapse.update(event["routing_entropy"]):
        return
    m = run.cfg.monitor
    fractions = ", ".join(f"{f:.2f}" for f in event["routing_fraction"])
    run.monitor.log({"event": "routing_collapse", "step": run.state.step, "routing_entropy": event["routing_entropy"],
                     "routing_fraction": event["routing_fraction"], "threshold": m.collapse_entropy,
                     "patience": m.collapse_patience})
    if run.dist.is_main:
        tqdm.write(f"warning: step {run.state.step}: routing collapsed: clean routing entropy "
                   f"{event['routing_entropy']:.3f} < monitor.collapse_entropy={m.collapse_entropy} for "
                   f"{m.collapse_patience} log events (fractions [{fractions}]); see README 'Routing that mixes'"
                   + ("; stopping (monitor.stop_on_collapse)" if m.stop_on_collapse else ""))
    run.collapsed = m.stop_on_collapse


def maybe_check_replicas(run: Run) -> None:
    """The design promises replicated fp32 trainable parameters that no rank lets drift: check it."""
    every = run.cfg.train.check_replicas_every
    if not every or run.state.step % every:
        return
    params = list(run.model.method.parameters())
    identical = distributed.replicas_identical(params)
    run.monitor.log({"event": "replica_check", "step": run.state.step, "identical": identical,
                     "dtypes": sorted({str(p.dtype).removeprefix("torch.") for p in params}),
                     "partitioned": any(distributed.is_partitioned(p) for p in params)})
    if not identical:
        raise RuntimeError(f"step {run.state.step}: trainable parameters differ between ranks")
