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
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from trainer.config import EMBEDDED_DATA_DIR, DataConfig, DataSource, Splits
from trainer.data.batch import task_names
from trainer.data.tasks import Example, get_task, hub_records, load_hub_split, load_split, paper_splits, split_paper


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
