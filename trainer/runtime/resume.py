"""Whether and how a run continues an earlier one in the same output_dir.

Re-running the same command resumes from `latest` automatically. The config of the earlier run
(output_dir/config.yaml) must then match, except for the keys in `FREE`, which change how the run is
executed, not what it computes. A different world size is allowed: the global batch of the checkpoint is
kept when it divides, and the trainer says what changed.
"""
from __future__ import annotations

import os
from pathlib import Path

import yaml

from trainer.runtime import checkpoint
from trainer.runtime import distributed
from trainer.config import RunConfig, flatten, to_dict
from trainer.methods.registry import get_method
from trainer.runtime.distributed import Dist

# Keys that may differ between the run in output_dir and the command continuing it (output_dir itself: a
# run directory may be moved). The batch split (micro x accumulation x world) does not change the gradient,
# because the loss is normalised by the token count of the whole global batch; `plan` reports the global batch.
FREE = ("output_dir", "overwrite", "checkpoint.", "collective_timeout_s", "hang_timeout_s", "train.max_nonfinite",
        "train.log_every", "train.eval_every", "train.check_replicas_every", "train.micro_batch_size",
        "train.grad_accum_steps", "train.global_batch_size", "eval.batch_size", "monitor.straggler_")


def changed_keys(before: dict, after: dict) -> list[str]:
    """'key: old -> new' for every leaf that differs, free keys excepted."""
    old, new = dict(flatten(before)), dict(flatten(after))
    out = []
    for key in sorted(old.keys() | new.keys()):
        if key.startswith(FREE) or old.get(key) == new.get(key):
            continue
        out.append(f"{key}: {old.get(key, '(absent)')!r} -> {new.get(key, '(absent)')!r}")
    return out


def check_output_dir(cfg: RunConfig) -> None:
    """Refuse to mix two different runs in one output_dir, and fail now if it is not writable (checked on
    every rank: same filesystem)."""
    out = Path(cfg.output_dir)
    check_previous_run(cfg)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise ValueError(f"output_dir '{out}' is not writable ({e.strerror})") from None


def check_previous_run(cfg: RunConfig) -> None:
    """Refuse to silently continue, in output_dir, a run that had a different config.

    Continuing is what happens by default (checkpoint.resume=auto); `latest` or a checkpoint name says the
    change is intended, and `fresh` or overwrite=true starts over.
    """
    previous = Path(cfg.output_dir) / "config.yaml"
    if not previous.is_file() or cfg.overwrite or cfg.checkpoint.resume.strip() != "auto":
        return
    try:
        before = yaml.safe_load(previous.read_text())
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as e:
        raise ValueError(f"{previous}: unreadable ({e.__class__.__name__}); "
                         "pass overwrite=true to start over") from None
    changes = changed_keys(before if isinstance(before, dict) else {}, to_dict(cfg))
    if changes:
        shown = "; ".join(changes[:3]) + (f"; and {len(changes) - 3} more" if len(changes) > 3 else "")
        raise ValueError(f"output_dir '{cfg.output_dir}' holds a run with a different config ({previous}: "
                         f"{shown}); pass checkpoint.resume=latest to continue it anyway, "
                         "checkpoint.resume=fresh or overwrite=true to start over, or choose another output_dir")


def plan(cfg: RunConfig, dist: Dist) -> checkpoint.Resume | None:
    """Find the checkpoint to continue from and fit the batch layout to this world size (on every rank).

    Starting at step 0 in a used output_dir moves the earlier run's checkpoints and metrics aside first.
    """
    say = print if dist.is_main else (lambda *_: None)
    resume = checkpoint.locate(cfg, say)
    if resume is None:
        if dist.is_main:
            aside = checkpoint.set_aside_previous(cfg)
            if aside:
                say(f"starting fresh at step 0; the earlier run's checkpoints and metrics are in {aside}")
        distributed.barrier()
        return None
    if get_method(cfg.prompt.method).trains_backbone:
        raise ValueError(f"{resume.path}: prompt.method={cfg.prompt.method} cannot resume: checkpoints hold the "
                         "prompt-side state, not the trained backbone; pass checkpoint.resume=fresh")
    say(f"resuming from {resume.path} at step {resume.meta['step']}")
    if cfg.checkpoint.resume.strip() != "auto":
        previous = Path(cfg.output_dir) / "config.yaml"
        if previous.is_file():
            for change in changed_keys(yaml.safe_load(previous.read_text()) or {}, to_dict(cfg)):
                say(f"config changed since the checkpoint: {change}")
    for line in fit_batch(cfg, resume.meta, dist.world_size):
        say(line)
    return resume


def fit_batch(cfg: RunConfig, meta: dict, world: int) -> list[str]:
    """Keep the checkpoint's global batch on `world` ranks when possible; lines saying what changed.

    With train.global_batch_size unset (0) the global batch would follow the world size; set it to the
    checkpoint's, lowering the micro batch if it does not divide. An explicit global batch is honoured.
    """
    t, kept = cfg.train, meta["global_batch"]
    notes = []
    if meta["world_size"] != world:
        notes.append(f"world size changed: {meta['world_size']} -> {world} ranks")
    if t.global_batch_size and t.global_batch_size != kept:
        notes.append(f"global batch changed by train.global_batch_size: {kept} -> {t.global_batch_size}; "
                     "the data order from here differs from the uninterrupted run's")
        return notes
    micro = next((m for m in range(t.micro_batch_size, 0, -1) if kept % (m * world) == 0), None)
    if micro is None:
        new = t.micro_batch_size * t.grad_accum_steps * world
        notes.append(f"global batch {kept} cannot be split over {world} ranks; using {new} "
                     "(micro x accumulation x world): the data order from here differs")
        return notes
    if micro != t.micro_batch_size:
        notes.append(f"micro batch lowered {t.micro_batch_size} -> {micro} so that the global batch divides")
    t.micro_batch_size, t.global_batch_size = micro, kept
    if meta["world_size"] != world or micro != meta["micro_batch"]:
        notes.append(f"global batch {kept} kept: micro {micro} x accumulation {kept // (micro * world)} "
                     f"x world {world} (was {meta['micro_batch']} x {meta['accum_steps']} x {meta['world_size']})")
    return notes
