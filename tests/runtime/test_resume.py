"""Resume is exact: stopped at step m and resumed to n equals an uninterrupted run to n (real processes).

Same world size: bit-for-bit within 1e-6, dropout on (every rank's RNG is restored). Another world size:
the global batch is kept, so only the float summation order differs (dropout off: masks are per rank).
"""
import pytest
from safetensors.torch import load_file

from tests.launch import events, run_trainer
from trainer.config import load_config
from trainer.runtime.resume import fit_batch

STEPS = ["train.max_steps=6", "checkpoint.every=2", "train.router_lr=0.1"]  # 2 parameter groups to restore
NO_DROPOUT = ["model.dropout=0", "train.global_batch_size=8"]


def losses(out) -> dict[int, float]:
    return {e["step"]: e["loss"] for e in events(out, "train")}


def max_param_diff(a, b) -> float:
    x, y = load_file(a / "method_final.safetensors"), load_file(b / "method_final.safetensors")
    assert x.keys() == y.keys()
    return max(float((x[k] - y[k]).abs().max()) for k in x)


def stop_then_resume(out, first: list[str], then: list[str], nproc_first: int, nproc_then: int):
    stopped = run_trainer(out, *first, "checkpoint.stop_at=3", nproc=nproc_first, check=False)
    assert stopped.returncode == 3 or "exitcode  : 3" in stopped.stderr, stopped.stderr[-3000:]
    assert [e["step"] for e in events(out, "train")] == [1, 2, 3]
    return run_trainer(out, *then, nproc=nproc_then)


@pytest.mark.multiprocess
def test_resume_same_world_is_exact_with_dropout(tmp_path):
    ref, out = tmp_path / "ref", tmp_path / "resumed"
    run_trainer(ref, *STEPS)  # model.dropout unset: T5's 0.1, so the restored RNG matters
    stop_then_resume(out, STEPS, STEPS, 1, 1)
    a, b = losses(ref), losses(out)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5, 6]
    delta = max(abs(a[s] - b[s]) for s in a)
    print(f"\nresume exactness, 1 rank, dropout 0.1: max |dloss| = {delta:.3g}, "
          f"max |dparam| = {max_param_diff(ref, out):.3g}")
    assert delta <= 1e-6 and max_param_diff(ref, out) <= 1e-6
    assert a[4] != a[6]  # the parameters moved after the resume
    assert [e["step"] for e in events(out, "resume")] == [3]


@pytest.fixture(scope="module")
def two_rank_reference(tmp_path_factory):
    ref = tmp_path_factory.mktemp("ref2")
    run_trainer(ref, *STEPS, *NO_DROPOUT, nproc=2)
    return ref


@pytest.mark.multiprocess
def test_resume_two_ranks_on_one(tmp_path, two_rank_reference):
    out = tmp_path / "run"
    proc = stop_then_resume(out, STEPS + NO_DROPOUT, STEPS + ["model.dropout=0"], 2, 1)
    assert "world size changed: 2 -> 1 ranks" in proc.stdout
    assert "global batch 8 kept: micro 4 x accumulation 2 x world 1 (was 4 x 1 x 2)" in proc.stdout
    a, b = losses(two_rank_reference), losses(out)
    delta = max(abs(a[s] - b[s]) for s in a)
    print(f"\nresume 2 -> 1 ranks: max |dloss| = {delta:.3g}, max |dparam| = "
          f"{max_param_diff(two_rank_reference, out):.3g}")
    assert sorted(b) == [1, 2, 3, 4, 5, 6] and delta <= 1e-5
    assert max_param_diff(two_rank_reference, out) <= 1e-5


@pytest.mark.multiprocess
def test_resume_one_rank_on_two(tmp_path, two_rank_reference):
    out = tmp_path / "run"
    # One rank, global batch 8 from accumulation (global_batch_size unset); resumed on 2 ranks it is kept.
    first = STEPS + ["model.dropout=0", "train.grad_accum_steps=2"]
    proc = stop_then_resume(out, first, first, 1, 2)
    assert "world size changed: 1 -> 2 ranks" in proc.stdout
    assert "global batch 8 kept: micro 4 x accumulation 1 x world 2 (was 4 x 2 x 1)" in proc.stdout
    a, b = losses(two_rank_reference), losses(out)
    delta = max(abs(a[s] - b[s]) for s in a)
    print(f"\nresume 1 -> 2 ranks: max |dloss| = {delta:.3g}")
    assert sorted(b) == [1, 2, 3, 4, 5, 6] and delta <= 1e-5
    assert max_param_diff(two_rank_reference, out) <= 1e-5


@pytest.mark.multiprocess
def test_fresh_and_named_checkpoint(tmp_path):
    out = tmp_path / "run"
    run_trainer(out, *STEPS)
    named = run_trainer(out, *STEPS, "checkpoint.resume=step-000004")
    assert "resuming from" in named.stdout and [e["step"] for e in events(out, "resume")] == [4]
    assert sorted({e["step"] for e in events(out, "train")}) == [1, 2, 3, 4, 5, 6]
    fresh = run_trainer(out, *STEPS, "train.max_steps=2", "checkpoint.resume=fresh")
    assert "starting fresh at step 0" in fresh.stdout
    assert [e["step"] for e in events(out, "train")] == [1, 2]
    aside = [p for p in out.iterdir() if p.name.startswith("previous-")]
    assert len(aside) == 1 and (aside[0] / "checkpoints" / "step-000006").is_dir()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["latest", "step-000002"]


# --- the batch layout on another world size, in-process -------------------------------------------------

def meta(world, micro, accum):
    return {"world_size": world, "micro_batch": micro, "accum_steps": accum, "global_batch": world * micro * accum}


def test_fit_batch_keeps_global_batch_lowering_micro_when_needed():
    cfg = load_config(None, ["train.micro_batch_size=4"])
    notes = fit_batch(cfg, meta(world=1, micro=4, accum=3), world=2)  # 12 over 2 ranks: micro 4 does not divide
    assert (cfg.train.micro_batch_size, cfg.train.global_batch_size) == (3, 12)
    assert any("micro batch lowered 4 -> 3" in n for n in notes)


def test_fit_batch_says_when_it_cannot_keep_it():
    cfg = load_config(None, ["train.micro_batch_size=4"])
    notes = fit_batch(cfg, meta(world=1, micro=5, accum=1), world=2)  # 5 examples cannot split over 2
    assert cfg.train.global_batch_size == 0 and any("cannot be split over 2 ranks; using 8" in n for n in notes)


def test_fit_batch_honours_an_explicit_change():
    cfg = load_config(None, ["train.global_batch_size=16"])
    notes = fit_batch(cfg, meta(world=2, micro=4, accum=1), world=2)
    assert cfg.train.global_batch_size == 16 and "8 -> 16" in notes[0]
