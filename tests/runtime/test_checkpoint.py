"""Checkpoint files: what they hold, retention, the latest pointer, and falling back past damaged ones.

One real run writes the checkpoints; the tests then read, damage and search copies of them.
"""
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from tests.launch import TINY, events, run_trainer
from trainer.config import load_config
from trainer.data.batch import TrainOrder
from trainer.methods.smop import SMoP
from trainer.optim import build_optimizer, build_scheduler
from trainer.runtime.checkpoint import CheckpointError, find_latest, locate, restore, verify
from trainer.runtime.distributed import Dist
from trainer.runtime.ds_config import BatchLayout
from trainer.runtime.guard import StepGuard
from trainer.state import TrainState

pytestmark = pytest.mark.multiprocess


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """5 steps, a checkpoint every 2 and at the end, 2 kept: step-000004 and step-000005 remain."""
    out = tmp_path_factory.mktemp("ckpt")
    run_trainer(out, "train.max_steps=5", "checkpoint.every=2", "checkpoint.keep=2")
    return out


@pytest.fixture
def copy(finished, tmp_path):
    target = tmp_path / "run"
    shutil.copytree(finished, target)
    return target


def test_retention_latest_and_no_leftovers(finished):
    root = finished / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step-000004", "step-000005"]
    assert (root / "latest").read_text() == "step-000005\n"
    meta = verify(root / "step-000005")
    assert meta["step"] == 5 and meta["reason"] == "end" and meta["world_size"] == 1
    assert meta["global_batch"] == 4 and verify(root / "step-000004")["reason"] == "periodic"


def test_holds_only_what_trains(finished):
    """Prompts and router (not the backbone), optimiser, scheduler and RNG, all readable without pickle."""
    path = finished / "checkpoints" / "step-000005"
    params = load_file(path / "method.safetensors")
    assert set(params) == {"prompts", "router.proj.weight", "router.center"}  # the centre travels with the router
    assert params["prompts"].shape == (4, 5, 32) and params["prompts"].dtype == torch.float32
    final = load_file(finished / "method_final.safetensors")
    assert all(torch.equal(params[k], final[k]) for k in params)
    state = torch.load(path / "state.pt", weights_only=True)
    assert state["scheduler"]["last_epoch"] == 5
    assert {s["step"].item() for s in state["optimizer"]["state"].values()} == {5.0}
    assert len(state["rng"]) == 1 and state["rng"][0].dtype == torch.uint8
    assert sum(f.stat().st_size for f in path.iterdir()) < 100_000  # KBs, not a backbone


def test_a_checkpoint_from_before_the_rename_resumes(copy):
    """Checkpoints written before method.safetensors was named for what it holds (smop.safetensors) verify and
    restore: the method's values, the optimiser's state, the step and the skipped count come back."""
    path = copy / "checkpoints" / "step-000005"
    (path / "method.safetensors").rename(path / "smop.safetensors")
    meta = json.loads((path / "meta.json").read_text())
    meta["files"] = {("smop.safetensors" if k == "method.safetensors" else k): v for k, v in meta["files"].items()}
    (path / "meta.json").write_text(json.dumps(meta))
    found = find_latest(copy / "checkpoints", lambda _: None)
    assert found.path == path
    state = empty_state()
    restore(state, found, Dist(0, 1, 0, torch.device("cpu")), seed=42)
    saved = load_file(path / "smop.safetensors")
    assert all(torch.equal(state.method.state_dict()[k], v) for k, v in saved.items())
    assert state.step == 5 and state.guard.skipped == 0 and state.scheduler.last_epoch == 5
    assert {s["step"].item() for s in state.optimizer.state_dict()["state"].values()} == {5.0}


def empty_state() -> TrainState:
    """A fresh TrainState of the shape the fixture's run trained (4 x 5 prompts, d = 32, centred router)."""
    cfg = load_config(None, TINY)
    method = SMoP(32, 4, 5, centered=True)
    params = [p for p in method.parameters() if p.requires_grad]
    optimizer = build_optimizer(params, cfg.train, list(method.router.parameters()))
    layout = BatchLayout(4, 1, 1)
    return TrainState(method, optimizer, build_scheduler(optimizer, cfg.train), StepGuard(5),
                      TrainOrder(100, layout.global_batch, 42), layout)


def messages():
    said = []
    return said, said.append


def test_truncated_latest_falls_back_saying_so(copy):
    root = copy / "checkpoints"
    state = root / "step-000005" / "state.pt"
    state.write_bytes(state.read_bytes()[:100])
    said, say = messages()
    found = find_latest(root, say)
    assert found.path.name == "step-000004" and found.meta["step"] == 4
    assert len(said) == 1 and "truncated" in said[0] and "falling back to step-000004" in said[0]


def test_corrupt_bytes_same_size_fall_back(copy):
    root = copy / "checkpoints"
    weights = root / "step-000005" / "method.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum"):
        verify(root / "step-000005")
    said, say = messages()
    assert find_latest(root, say).path.name == "step-000004" and "corrupt" in said[0]


def test_unfinished_checkpoint_without_meta_is_skipped(copy):
    root = copy / "checkpoints"
    (root / "step-000005" / "meta.json").unlink()
    said, say = messages()
    assert find_latest(root, say).path.name == "step-000004" and "no meta.json" in said[0]


def test_latest_pointer_missing_uses_newest_valid(copy):
    root = copy / "checkpoints"
    (root / "latest").unlink()
    assert find_latest(root, print).path.name == "step-000005"


def test_all_damaged_is_an_error_not_a_silent_restart(copy):
    root = copy / "checkpoints"
    for name in ("step-000004", "step-000005"):
        (root / name / "state.pt").write_bytes(b"")
    with pytest.raises(ValueError, match="no usable checkpoint; pass checkpoint.resume=fresh"):
        find_latest(root, lambda _: None)


def test_named_checkpoint_damaged_is_an_error(copy):
    (copy / "checkpoints" / "step-000004" / "state.pt").write_bytes(b"x")
    cfg = load_config(None, [f"output_dir={copy}", "checkpoint.resume=step-000004"])
    with pytest.raises(CheckpointError, match="step-000004/state.pt: 1 bytes"):
        locate(cfg)


def test_rerun_resumes_past_a_damaged_latest(copy):
    """The same command on a damaged latest: resumes from the one before, says so, finishes, exit 0."""
    state = copy / "checkpoints" / "step-000005" / "state.pt"
    state.write_bytes(state.read_bytes()[:-10])
    proc = run_trainer(copy, "train.max_steps=5", "checkpoint.every=2", "checkpoint.keep=2")
    assert "falling back to step-000004" in proc.stdout
    assert "resuming from" in proc.stdout and "step-000004 at step 4" in proc.stdout
    assert [e["step"] for e in events(copy, "resume")] == [4]
    assert [e["step"] for e in events(copy, "train")] == [1, 2, 3, 4, 5]  # step 5 logged once, again
    verify(copy / "checkpoints" / "step-000005")  # rewritten whole
    assert json.loads((copy / "checkpoints" / "step-000005" / "meta.json").read_text())["step"] == 5


def test_unreadable_latest_pointer_uses_newest_valid(copy):
    (copy / "checkpoints" / "latest").write_bytes(b"\xff\xfe")
    said, say = messages()
    assert find_latest(copy / "checkpoints", say).path.name == "step-000005" and "unreadable" in said[0]


def test_a_folder_without_meta_json_is_never_resumed_from(copy):
    """meta.json is written last, inside the temporary folder: a step-* folder without one is not a checkpoint,
    whatever `latest` says, whether it is the newest, and whether it is asked for by name."""
    root = copy / "checkpoints"
    (root / "step-000005" / "meta.json").unlink()  # `latest` names it
    said, say = messages()
    assert find_latest(root, say).path.name == "step-000004" and "no meta.json" in said[0]
    (root / "latest").unlink()  # no pointer either: the newest folder is skipped all the same
    assert find_latest(root, lambda _: None).path.name == "step-000004"
    cfg = load_config(None, [f"output_dir={copy}", "checkpoint.resume=step-000005"])
    with pytest.raises(CheckpointError, match="step-000005: no meta.json"):
        locate(cfg)
    proc = run_trainer(copy, "train.max_steps=5", "checkpoint.every=2", "checkpoint.keep=2")  # the same command
    assert [e["step"] for e in events(copy, "resume")] == [4] and "step-000004 at step 4" in proc.stdout
    assert verify(root / "step-000005")["step"] == 5  # written again, whole


@pytest.mark.parametrize("damage", ["truncated", "no meta.json"])
def test_fallback_off_makes_a_damaged_newest_checkpoint_an_error(copy, damage):
    """checkpoint.fallback=false: resuming from the one before would silently lose steps; it is an error naming
    the checkpoint, the cause and the way out, and nothing is resumed."""
    root = copy / "checkpoints"
    if damage == "truncated":
        (root / "step-000005" / "state.pt").write_bytes(b"x")
    else:
        (root / "step-000005" / "meta.json").unlink()
    cfg = load_config(None, [f"output_dir={copy}", "checkpoint.fallback=false"])
    with pytest.raises(ValueError) as caught:
        locate(cfg, say=lambda line: pytest.fail(f"said {line!r}: no fallback expected"))
    message = str(caught.value)
    assert message.startswith(f"checkpoint {root / 'step-000005'}") and "checkpoint.fallback=false forbids" in message
    assert "(step-000004)" in message and "checkpoint.resume=fresh" in message and "\n" not in message
    assert locate(load_config(None, [f"output_dir={copy}"]), lambda _: None).path.name == "step-000004"  # default


def test_a_first_step_checkpoint_probes_the_storage(tmp_path):
    """checkpoint.at_first_step: a checkpoint after this job's first step (reason first_step), then as usual."""
    run_trainer(tmp_path, "train.max_steps=3", "checkpoint.every=0", "checkpoint.at_first_step=true")
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.glob("step-*")) == ["step-000001", "step-000003"]
    assert verify(root / "step-000001")["reason"] == "first_step" and verify(root / "step-000003")["reason"] == "end"
