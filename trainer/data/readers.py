"""Raw records from files and the hub: jsonl, the official SuperGLUE layout, Hugging Face `super_glue`.

Every record travels with its `where` ("file:line" or "super_glue/<config>/<split>:<row>"), so a bad
record's error names its place. Errors are one line: a jsonl error names `path:line`, a hub failure
says how to do without the hub.
"""
from __future__ import annotations

import json
from pathlib import Path

from trainer.choice import Choice
from trainer.data.tasks import Example, Task


class DataSource(Choice):
    """data source: a local directory in the official layout, or the Hugging Face hub."""

    LOCAL = "local"
    HUB = "hub"

SPLITS = ("train", "val", "test")
_HUB_SPLITS = {"train": "train", "val": "validation", "test": "test"}


def read_jsonl_lines(path) -> list[tuple[int, dict]]:
    """(line number, record) for each non-blank line of a jsonl file; one-line errors naming path:line."""
    records = []
    try:
        f = open(path, "rb")
    except OSError as e:
        raise ValueError(f"{path}: cannot read ({e.strerror}); check data.data_dir and data.task") from None
    with f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise ValueError(f"{path}:{lineno}: not UTF-8") from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
            records.append((lineno, record))
    if not records:
        raise ValueError(f"{path}: no records")
    return records


def read_jsonl(path) -> list[dict]:
    """The records of a jsonl file (blank lines skipped)."""
    return [record for _, record in read_jsonl_lines(path)]


def split_path(task: Task, data_dir, split: str) -> Path:
    """`data_dir/<dirname>/<split>.jsonl` of the official layout; a one-line error for an unknown split."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; known: {', '.join(SPLITS)}")
    return Path(data_dir) / task.dirname / f"{split}.jsonl"


def located_records(task: Task, path: Path) -> list[tuple[str, dict]]:
    """("file:line", record) pairs; the generic task's records get their position as default idx."""
    out = []
    for position, (lineno, record) in enumerate(read_jsonl_lines(path)):
        if task.generic and "idx" not in record:
            record = {**record, "idx": position}
        out.append((f"{path}:{lineno}", record))
    return out


def expand(task: Task, located, train: bool, labelled: bool) -> list[Example]:
    """The Examples of ("where", record) pairs, in order."""
    return [ex for where, record in located
            for ex in task.examples(record, where, train=train, labelled=labelled)]


def load_split(task: Task, data_dir, split: str, train: bool | None = None) -> list[Example]:
    """Examples of `data_dir/<dirname>/<split>.jsonl`; `train` defaults to split == "train".

    The test split is read unlabelled (label None, target "").
    """
    records = located_records(task, split_path(task, data_dir, split))
    return expand(task, records, split == "train" if train is None else train, split != "test")


def load_hub_split(task: Task, split: str, train: bool | None = None) -> list[Example]:
    """Examples of the Hugging Face `super_glue` dataset (needs the hub or its local cache)."""
    return expand(task, hub_records(task, split), split == "train" if train is None else train, split != "test")


def hub_records(task: Task, split: str) -> list[tuple[str, dict]]:
    """("super_glue/<config>/<split>:<row>", record) pairs of the Hugging Face dataset.

    Any failure to fetch (no network, no cache, a renamed dataset) becomes one ValueError line: the
    datasets library's own messages run to many lines of retries and tracebacks.
    """
    if not task.hub_config:
        raise ValueError(f"task {task.name} has no Hugging Face super_glue config")
    split_path(task, ".", split)  # validates the split name
    import datasets  # deferred: only this function needs it

    try:
        rows = datasets.load_dataset("super_glue", task.hub_config, split=_HUB_SPLITS[split])
    except Exception as e:  # noqa: BLE001 - any fetch failure is reported the same way, then stops the run
        reason = (str(e).strip().splitlines() or [""])[0][:200]
        raise ValueError(f"data.source=hub: cannot load super_glue/{task.hub_config} split "
                         f"{_HUB_SPLITS[split]} ({type(e).__name__}: {reason}); use data.source=local with "
                         f"data.data_dir=<official SuperGLUE folder>, or pre-fill the datasets cache and set "
                         f"HF_DATASETS_OFFLINE=1") from None
    return [(f"super_glue/{task.hub_config}/{split}:{i}", dict(row)) for i, row in enumerate(rows)]
