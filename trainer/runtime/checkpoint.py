"""Checkpoints of what trains, and resuming from them.

A checkpoint is `output_dir/checkpoints/step-NNNNNN/` holding only the training state (`trainer/state.py`):
the method's parameters (`method.safetensors`; `smop.safetensors` in checkpoints written before the rename is
still read), the optimiser and scheduler state and every rank's RNG (`state.pt`, tensors and plain values
only, read back with `torch.load(weights_only=True)`), and `meta.json` (step, batch layout, and the size and
SHA-256 of each file). The frozen backbone is never saved: it is rebuilt from `model.name_or_path`. The data
order and router noise are pure functions of (seed, step), so the step is the whole data-loader position.

The method's parameters and their optimiser state are replicated on every rank, outside ZeRO, so rank 0
writes them once; that is also what lets a run resume on a different number of ranks.

Crash safety: a checkpoint is written into a temporary directory, fsynced and renamed into place; then the
`latest` file is rewritten the same way (write, fsync, rename). A crash at any moment leaves `latest`
naming a complete checkpoint. A checkpoint whose files do not match its `meta.json` is skipped, saying so,
in favour of the one before it (`checkpoint.fallback=false`: an error instead). A save that fails (full
disk, quota, I/O error) stops every rank at the same step with exit code 6, leaving no half-written folder
and `latest` as it was (trainer/runtime/storage.py).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from safetensors.torch import save as save_safetensors

from trainer.config import RunConfig
from trainer.runtime import distributed, storage
from trainer.runtime.distributed import Dist
from trainer.state import TrainState

FORMAT = 1
METHOD_FILE = "method.safetensors"
OLD_METHOD_FILE = "smop.safetensors"  # the name before it held any method's state; still read


@dataclass
class Resume:
    """The checkpoint a run continues from, read and verified before anything is built."""

    path: Path
    meta: dict


class CheckpointError(ValueError):
    """A checkpoint that cannot be used (missing, truncated or corrupt files)."""


def checkpoints_dir(cfg: RunConfig) -> Path:
    return Path(cfg.output_dir) / "checkpoints"


def step_name(step: int) -> str:
    return f"step-{step:06d}"


# --- writing --------------------------------------------------------------------------------------------

def save(state: TrainState, dist: Dist, root: Path, keep: int, reason: str) -> Path:
    """Write a checkpoint of `state` at its step into `root`, keeping the newest `keep`; returns its folder.

    Called on every rank: it gathers every rank's RNG state, rank 0 writes, and every rank learns in one
    collective whether the write failed (full disk, quota, I/O error, permission): then each raises the same
    StorageError (trainer/runtime/storage.py), the half-written folder is gone and `latest` is untouched.
    """
    rng = distributed.all_gather_objects(torch.get_rng_state())  # dropout draws differ per rank
    # On CUDA dropout draws from the device's generator, which the CPU state above does not cover.
    device_rng = distributed.all_gather_objects(
        torch.cuda.get_rng_state(dist.device) if dist.device.type == "cuda" else None)
    name = step_name(state.step)
    tmp, final = root / f".tmp-{name}", root / name
    unnamed = []  # a complete folder that `latest` does not name yet

    def write() -> None:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        # Serialised in memory and written by Python, so that every failure of the storage is an OSError with
        # its errno (safetensors' and torch's own file writers raise other errors, without one).
        _write_bytes(tmp / METHOD_FILE, save_safetensors(
            {k: v.detach().cpu().contiguous() for k, v in state.method.state_dict().items()}))
        buffer = io.BytesIO()
        torch.save({"optimizer": state.optimizer.state_dict(), "scheduler": state.scheduler.state_dict(),
                    "rng": rng, "device_rng": device_rng}, buffer)
        _write_bytes(tmp / "state.pt", buffer.getvalue())
        files = (METHOD_FILE, "state.pt")
        layout = state.layout
        meta = {"format": FORMAT, "step": state.step, "reason": reason, "world_size": layout.world,
                "global_batch": layout.global_batch, "micro_batch": layout.micro, "accum_steps": layout.accum,
                "nonfinite_skipped": state.guard.skipped, "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "files": {f: {"bytes": (tmp / f).stat().st_size, "sha256": _sha256(tmp / f)} for f in files}}
        _write_synced(tmp / "meta.json", json.dumps(meta, indent=2) + "\n")
        if final.exists():  # a re-save of the same step (e.g. a resumed run that ends where it resumed)
            shutil.rmtree(final)
        os.replace(tmp, final)
        unnamed.append(final)
        _fsync_dir(root)
        _write_synced(root / "latest", name + "\n", atomic=True)
        unnamed.clear()
        _prune(root, keep, keep_name=name)

    def cleanup() -> None:
        # A save either completes, `latest` naming it, or leaves nothing behind.
        for path in (tmp, *unnamed):
            shutil.rmtree(path, ignore_errors=True)
        (root / ".latest.tmp").unlink(missing_ok=True)

    storage.written_by_main(dist, f"checkpoint {name}", root,
                            lambda: f"the run stopped after step {state.step}; {resume_point(root)}", write, cleanup)
    return final


def resume_point(root: Path) -> str:
    """What the same command resumes from, in words: the checkpoint `latest` in `root` names, if any."""
    try:
        named = (root / "latest").read_text().strip()
    except (OSError, UnicodeDecodeError):
        named = ""
    if named:
        return f"{root / 'latest'} names {named}, the last complete checkpoint"
    return "no checkpoint was written yet, so the run will start at step 0"


def _prune(root: Path, keep: int, keep_name: str) -> None:
    for old in sorted(root.glob("step-*"))[:-keep]:
        if old.name != keep_name:
            shutil.rmtree(old, ignore_errors=True)


def _write_synced(path: Path, text: str, atomic: bool = False) -> None:
    target = path.with_name(f".{path.name}.tmp") if atomic else path
    _write_bytes(target, text.encode())
    if atomic:
        os.replace(target, path)
        _fsync_dir(path.parent)


def _write_bytes(path: Path, data: bytes) -> None:
    """Write and fsync: a full disk surfaces here (at write, flush or fsync) as an OSError with its errno."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --- finding and verifying ------------------------------------------------------------------------------

def verify(path: Path) -> dict:
    """meta.json of the checkpoint at `path` once every file matches it; CheckpointError otherwise."""
    try:
        meta = json.loads((path / "meta.json").read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no meta.json (not a checkpoint, or an unfinished one)") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}/meta.json: unreadable ({e.__class__.__name__})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or not isinstance(meta.get("files"), dict):
        raise CheckpointError(f"{path}/meta.json: not a format-{FORMAT} checkpoint description")
    if not (METHOD_FILE in meta["files"] or OLD_METHOD_FILE in meta["files"]) or "state.pt" not in meta["files"]:
        raise CheckpointError(f"{path}/meta.json: lists {', '.join(meta['files']) or 'no files'}, "
                              f"not {METHOD_FILE} and state.pt")
    for name in meta["files"]:
        expected, file = meta["files"].get(name, {}), path / name
        if not file.is_file():
            raise CheckpointError(f"{file}: missing")
        size = file.stat().st_size
        if size != expected.get("bytes"):
            raise CheckpointError(f"{file}: {size} bytes, meta.json says {expected.get('bytes')} (truncated?)")
        if _sha256(file) != expected.get("sha256"):
            raise CheckpointError(f"{file}: checksum differs from meta.json (corrupt)")
    return meta


def find_latest(root: Path, say=print, fallback: bool = True) -> Resume | None:
    """The newest usable checkpoint: the one `latest` names, else the newest step-* that verifies.

    Each unusable one is reported through `say` and skipped, so a corrupt save costs `every` steps, not
    the run. With `fallback` off (checkpoint.fallback=false) the newest one must verify: a damaged one is an
    error (ValueError) instead of a silent loss of the steps since the one before.
    """
    candidates = sorted(root.glob("step-*"), reverse=True)
    pointer = root / "latest"
    try:
        named = root / pointer.read_text().strip() if pointer.is_file() else None
    except (OSError, UnicodeDecodeError):
        say(f"warning: {pointer} is unreadable; using the newest checkpoint that verifies")
        named = None
    if named is not None:
        candidates = [named] + [c for c in candidates if c != named]
    for i, path in enumerate(candidates):
        try:
            return Resume(path, verify(path))
        except CheckpointError as e:
            after = candidates[i + 1].name if i + 1 < len(candidates) else "none"
            if not fallback:
                raise ValueError(f"checkpoint {e}; checkpoint.fallback=false forbids resuming from the one before "
                                 f"({after}): repair or remove {path.name}, pass checkpoint.fallback=true to resume "
                                 "from the one before, or checkpoint.resume=fresh to start over") from None
            say(f"warning: checkpoint {e}; falling back to {after}")
    if candidates:
        raise ValueError(f"{root}: no usable checkpoint; pass checkpoint.resume=fresh to start over")
    return None


def locate(cfg: RunConfig, say=print) -> Resume | None:
    """The checkpoint this run continues from, per `checkpoint.resume` (None: start at step 0)."""
    how, root = cfg.checkpoint.resume.strip(), checkpoints_dir(cfg)
    if how == "fresh" or (how == "auto" and cfg.overwrite):
        return None
    if how in ("auto", "latest"):
        found = find_latest(root, say, cfg.checkpoint.fallback) if root.is_dir() else None
        if found is None and how == "latest":
            raise ValueError(f"checkpoint.resume=latest: no usable checkpoint in {root}")
        return found
    path = Path(how) if Path(how).is_dir() else root / how
    if not path.is_dir():
        raise ValueError(f"checkpoint.resume: no checkpoint '{how}' (looked in {root})")
    return Resume(path, verify(path))  # named explicitly: no silent fallback


# --- reading --------------------------------------------------------------------------------------------

def method_file(path: Path) -> Path:
    """The method's parameters in checkpoint `path` (the file's name before the rename, in an old one)."""
    return path / METHOD_FILE if (path / METHOD_FILE).exists() else path / OLD_METHOD_FILE


def restore(state: TrainState, resume: Resume, dist: Dist, seed: int) -> None:
    """Load the checkpoint `resume` into `state` (every rank reads the same files).

    The RNG of each rank comes back when the world size is the checkpoint's; otherwise it is reseeded from
    (seed, step, rank): dropout masks cannot match another world size anyway.
    """
    meta, path = resume.meta, resume.path
    try:
        method_state = load_file(str(method_file(path)))
        saved = torch.load(path / "state.pt", weights_only=True, map_location="cpu")
        state.method.load_state_dict({k: v.to(dist.device) for k, v in method_state.items()})
        state.optimizer.load_state_dict(saved["optimizer"])
        state.scheduler.load_state_dict(saved["scheduler"])
    except (RuntimeError, KeyError, ValueError, OSError) as e:
        raise CheckpointError(f"{path}: does not fit this run ({str(e).splitlines()[0]})") from None
    state.step, state.guard.skipped = meta["step"], meta.get("nonfinite_skipped", 0)
    rng = saved["rng"]
    if len(rng) == dist.world_size:
        torch.set_rng_state(rng[dist.rank])
        device_rng = saved.get("device_rng", [None] * len(rng))[dist.rank]  # absent before CUDA states
        if device_rng is not None and dist.device.type == "cuda":
            torch.cuda.set_rng_state(device_rng, dist.device)
    else:
        torch.manual_seed(seed * 1_000_003 + state.step * 101 + dist.rank)


def set_aside_previous(cfg: RunConfig) -> Path | None:
    """Starting fresh in a used output_dir: move its checkpoints and metrics to previous-<time>/ (rank 0)."""
    out = Path(cfg.output_dir)
    old = [p for p in (out / "checkpoints", out / "metrics.jsonl", out / "tensorboard") if p.exists()]
    if not old:
        return None
    aside = out / time.strftime("previous-%Y%m%d-%H%M%S")
    aside.mkdir(exist_ok=True)
    for p in old:
        os.replace(p, aside / p.name)
    return aside
