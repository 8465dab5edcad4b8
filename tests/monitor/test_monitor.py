"""The routing monitor: clean and noisy summaries, the collapse detector on constructed routers, the straggler
detector, and metrics.jsonl on a full device."""
import json
import os

import pytest
import torch

from trainer.monitor.monitor import CollapseDetector, Monitor, StragglerDetector, routing_summary
from trainer.methods.router import Router


def counts_of(index: torch.Tensor, k: int = 4) -> torch.Tensor:
    """(1 task, k) routing counts of a batch's chosen prompts."""
    return torch.bincount(index, minlength=k).unsqueeze(0)


def routers():
    """A router over inputs that share a large direction: raw collapses, centred stays balanced."""
    torch.manual_seed(0)
    x = torch.randn(16) * 10 + torch.randn(256, 16)
    collapsed, balanced = Router(16, 4).eval(), Router(16, 4, centered=True).eval()
    with torch.no_grad():
        balanced.center.copy_(x.mean(0))
    return x, collapsed, balanced


def test_detector_fires_once_on_a_collapsed_router_after_patience():
    x, collapsed, _ = routers()
    entropy = routing_summary(counts_of(collapsed(x).index), ["t"])["routing_entropy"]
    assert entropy < 0.25
    detector = CollapseDetector(threshold=0.25, patience=3)
    fired = [detector.update(entropy) for _ in range(6)]
    assert fired == [False, False, True, False, False, False]  # declared once, at the third event in a row


def test_detector_stays_silent_on_a_balanced_router():
    x, _, balanced = routers()
    entropy = routing_summary(counts_of(balanced(x).index), ["t"])["routing_entropy"]
    assert entropy > 0.9
    detector = CollapseDetector(threshold=0.25, patience=1)
    assert not any(detector.update(entropy) for _ in range(10))


def test_a_balanced_event_resets_the_streak_and_zero_turns_it_off():
    detector = CollapseDetector(threshold=0.25, patience=2)
    assert [detector.update(e) for e in (0.0, 0.9, 0.0, 0.9, 0.0)] == [False] * 5
    assert detector.update(0.1) is True
    off = CollapseDetector(threshold=0.0, patience=1)
    assert not off.update(0.0)


def test_noisy_training_routing_hides_what_the_clean_routing_shows():
    """The monitor's reason to log both: under sigma = 1 noise the training choices of a collapsed router
    look spread out while its clean choices use one prompt."""
    x, collapsed, _ = routers()
    out = collapsed.train(True)(x, torch.randn(len(x), 4))
    clean = routing_summary(counts_of(out.clean_index), ["t"])
    noisy = routing_summary(counts_of(out.index), ["t"], prefix="noisy_routing_")
    assert set(noisy) == {"noisy_routing_fraction", "noisy_routing_entropy", "noisy_routing_cv"}
    assert noisy["noisy_routing_entropy"] > clean["routing_entropy"] + 0.2
    assert sum(noisy["noisy_routing_fraction"]) == pytest.approx(1.0)


def test_straggler_named_once_per_slow_spell_against_the_others_median():
    detector = StragglerDetector(factor=1.5, patience=3, world=4)
    calm, rank2_slow = [0.10, 0.11, 0.12, 0.10], [0.10, 0.11, 0.40, 0.10]
    named = [detector.update(times) for times in [calm, rank2_slow, rank2_slow, rank2_slow, rank2_slow]]
    assert named[:3] == [[], [], []] and named[4] == []  # the third slow event in a row, once
    assert named[3] == [(2, 0.40, 0.10)]  # its time and the median of the others (0.10, 0.11, 0.10)
    assert detector.update(calm) == [] and detector.streaks == [0, 0, 0, 0]
    assert [detector.update(rank2_slow) for _ in range(3)][-1] == [(2, 0.40, 0.10)]  # a new spell: named again


def test_straggler_of_two_ranks_is_measured_against_the_other():
    """With 2 ranks the median of all would be their mean, which a rank can never exceed 2x."""
    detector = StragglerDetector(factor=1.5, patience=1, world=2)
    assert detector.update([0.10, 0.16]) == [(1, 0.16, 0.10)]
    assert detector.update([0.10, 0.14]) == []


def test_events_the_disk_refuses_wait_in_memory_and_are_written_once(tmp_path, capsys):
    """metrics.jsonl on a device that is always full (/dev/full: ENOSPC): no exception, one warning, the events
    kept; once writes succeed again every event is written once, in order."""
    (tmp_path / "metrics.jsonl").symlink_to("/dev/full")
    monitor = Monitor(str(tmp_path), enabled=True)
    monitor.log({"event": "train", "step": 1, "loss": 1.0})
    monitor.log({"event": "train", "step": 2, "loss": 2.0})
    assert capsys.readouterr().err.count("No space left on device") == 1
    os.close(monitor.fd)  # space is back: the same monitor now writes to a real file
    monitor.fd = os.open(tmp_path / "real.jsonl", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    monitor.log({"event": "train", "step": 3, "loss": 3.0})
    monitor.close()
    lines = (tmp_path / "real.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3]
