"""Which examples a run trains on, evaluates on during training, and tests on at the end.

Two conventions (`data.splits`):

- official: train on `data.train_split`, evaluate on `data.eval_split` (default train / val). SuperGLUE's
  test labels are hidden, so there is no test evaluation.
- paper: what the SMoP code does. The official validation set becomes the test set; a dev set is carved
  from train.jsonl (the last `data.dev_fraction` of each label's records, in file order, so a MultiRC
  paragraph never straddles the two sides). The run trains on the rest of train, evaluates on dev every
  `train.eval_every` steps and at the end, then on test once, with the final parameters.

For a mixture (`data.task=rte,cb`) every task is split the same way and the sets are concatenated, each
example tagged with its task's position in `data.task`.

The paper's carving works on raw records, before they become Examples (`carve_dev`, `paper_splits`), so
that the records of one unit (a MultiRC paragraph, a ReCoRD passage) land on one side.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from typing import TYPE_CHECKING

from trainer.choice import Choice
from trainer.data.batch import task_names
from trainer.data.readers import (DataSource, expand, hub_records, load_hub_split, load_split, located_records,
                                  split_path)
from trainer.data.tasks import Example, Task, get_task, label_index
from trainer.paths import EMBEDDED_DATA_DIR

if TYPE_CHECKING:
    from trainer.config import DataConfig


class Splits(Choice):
    """splits: which sets a run trains, evaluates and tests on (official, or the SMoP paper's)."""

    OFFICIAL = "official"
    PAPER = "paper"


@dataclass
class Split:
    """Examples of one role (train, eval or test) over every task of the run."""

    name: str
    """Where the examples come from: "train", "dev", "val", "test"."""
    examples: list[Example]
    task_ids: list[int]
    """Index into `data.task`'s names of each example's task."""


@dataclass
class RunSplits:
    train: Split
    eval: Split
    """Evaluated every train.eval_every steps and at the end of training."""
    test: Split | None
    """Evaluated once after training (splits=paper); None for splits=official."""


def load_splits(cfg: DataConfig) -> RunSplits:
    """The run's train, eval and (splits=paper) test examples; eval and test capped per task by
    `data.max_eval_examples`."""
    names = task_names(cfg)
    if not names:
        raise ValueError("data.task: no task named")
    per_task = [_task_splits(cfg, name) for name in names]
    if cfg.splits == Splits.PAPER:
        roles = {"train": "train", "eval": "dev", "test": "test"}
    else:
        roles = {"train": cfg.train_split, "eval": cfg.eval_split}
    built = {}
    for role, name in roles.items():
        examples, task_ids = [], []
        for t, found in enumerate(per_task):
            chosen = found[role]
            if role != "train" and cfg.max_eval_examples:
                chosen = chosen[: cfg.max_eval_examples]
            if not chosen:
                raise ValueError(f"data.task={names[t]}: the {name} split has no examples"
                                 + (" (raise data.dev_fraction or use more data)" if name == "dev" else ""))
            examples += chosen
            task_ids += [t] * len(chosen)
        built[role] = Split(name, examples, task_ids)
    return RunSplits(built["train"], built["eval"], built.get("test"))


def _task_splits(cfg: DataConfig, name: str) -> dict[str, list[Example]]:
    """{"train", "eval", "test"} (paper) or {"train", "eval"} (official) examples of one task."""
    task = get_task(name)
    data_dir = Path(cfg.data_dir) if cfg.data_dir else EMBEDDED_DATA_DIR
    hub = cfg.source == DataSource.HUB
    if cfg.splits == Splits.PAPER:
        found = (split_paper(task, hub_records(task, "train"), hub_records(task, "val"), cfg.dev_fraction)
                 if hub else paper_splits(task, data_dir, cfg.dev_fraction))
        return {"train": found["train"], "eval": found["dev"], "test": found["test"]}
    out = {}
    for role, split, train in (("train", cfg.train_split, True), ("eval", cfg.eval_split, False)):
        out[role] = load_hub_split(task, split, train) if hub else load_split(task, data_dir, split, train)
    return out


def paper_splits(task: Task, data_dir, fraction: float = 0.1) -> dict[str, list[Example]]:
    """The SMoP paper's splits: {"train", "dev"} carved from train.jsonl by `carve_dev`, and "test" =
    the official val.jsonl (SuperGLUE's test labels are hidden). dev and test are expanded for
    evaluation (one ReCoRD Example per query), train for training.
    """
    return split_paper(task, located_records(task, split_path(task, data_dir, "train")),
                       located_records(task, split_path(task, data_dir, "val")), fraction)


def split_paper(task: Task, train_located, val_located, fraction: float = 0.1) -> dict[str, list[Example]]:
    """`paper_splits` from ("where", record) pairs of train and val, local or from the hub."""
    train, dev = _carve_positions(task, [r for _, r in train_located], fraction, [w for w, _ in train_located])
    return {"train": expand(task, [train_located[p] for p in train], True, True),
            "dev": expand(task, [train_located[p] for p in dev], False, True),
            "test": expand(task, val_located, False, True)}


def carve_dev(records: list[dict], task: Task, fraction: float = 0.1) -> tuple[list[dict], list[dict]]:
    """Split raw train records into (train, dev) as the SMoP code does: dev is the last `fraction`
    of each label's records, in file order, per label (count rounded down). Works on records before
    expansion, so a MultiRC paragraph (or all flat HF rows of one) never straddles the two sides;
    MultiRC, ReCoRD and jsonl records are one group. Both sides keep file order.
    """
    train, dev = _carve_positions(task, records, fraction)
    return [records[p] for p in train], [records[p] for p in dev]


def _carve_positions(task: Task, records: list[dict], fraction: float, where=None):
    """(train positions, dev positions): the last `fraction` (rounded down) of each label's units."""
    if not 0 <= fraction < 1:
        raise ValueError(f"dev fraction must be in [0, 1), got {fraction}")
    units: dict = {}
    for position, record in enumerate(records):
        units.setdefault(_unit_key(task, record, position), []).append(position)
    by_label: dict = {}
    for positions in units.values():
        record = records[positions[0]]
        # MultiRC, ReCoRD and jsonl have no one label per unit: they form a single group.
        label = (None if task.label_words is None or task.name == "multirc" else
                 label_index(task, record, where[positions[0]] if where else "record", True))
        by_label.setdefault(label, []).append(positions)
    dev = set()
    for group in by_label.values():
        n_dev = int(len(group) * fraction)
        for positions in group[len(group) - n_dev:]:
            dev.update(positions)
    train = [p for p in range(len(records)) if p not in dev]
    return train, sorted(dev)


def _unit_key(task: Task, record: dict, position: int):
    """Records that must stay together: the flat HF rows of one MultiRC paragraph / ReCoRD passage."""
    idx = record.get("idx")
    if isinstance(idx, dict) and task.name in ("multirc", "record"):
        return idx.get("paragraph", idx.get("passage"))
    return ("position", position)
