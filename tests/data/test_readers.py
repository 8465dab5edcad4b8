"""Reading records: the official layout, jsonl errors naming path:line, test splits, the generic task."""
from pathlib import Path

import pytest

from trainer.data.readers import load_split
from trainer.data.tasks import Example, get_task
from tests.launch import FIXTURES



def test_test_split_without_labels(tmp_path):
    (tmp_path / "CB").mkdir()
    (tmp_path / "CB" / "test.jsonl").write_text('{"premise": "p", "hypothesis": "h", "idx": 0}\n')
    (ex,) = load_split(get_task("cb"), tmp_path, "test")
    assert (ex.label, ex.target) == (None, "")


def test_generic_jsonl_task(tmp_path):
    (tmp_path / "val.jsonl").write_text(
        '{"input": "2+2", "target": "4"}\n{"input": "x", "target": "y", "idx": "k"}\n')
    examples = load_split(get_task("jsonl"), tmp_path, "val")
    assert examples == [Example("2+2", "4", 0, None), Example("x", "y", "k", None)]


def rte_file(tmp_path, data: bytes) -> Path:
    (tmp_path / "RTE").mkdir(exist_ok=True)
    path = tmp_path / "RTE" / "train.jsonl"
    path.write_bytes(data)
    return path


def load_error(tmp_path, data: bytes, name="rte") -> str:
    rte_file(tmp_path, data)
    with pytest.raises(ValueError) as info:
        load_split(get_task(name), tmp_path, "train")
    message = str(info.value)
    assert "\n" not in message
    return message


GOOD = b'{"premise": "p", "hypothesis": "h", "idx": 0, "label": "entailment"}\n'


def test_bad_json_line(tmp_path):
    path = rte_file(tmp_path, b"")
    assert load_error(tmp_path, GOOD + b'{"premise": \n').startswith(f"{path}:2: not valid JSON (")


def test_non_utf8_line(tmp_path):
    path = rte_file(tmp_path, b"")
    assert load_error(tmp_path, GOOD + GOOD + b'{"premise": "caf\xe9"}\n') == f"{path}:3: not UTF-8"


def test_empty_file(tmp_path):
    path = rte_file(tmp_path, b"")
    assert load_error(tmp_path, b"\n  \n") == f"{path}: no records"


def test_missing_field(tmp_path):
    path = rte_file(tmp_path, b"")
    message = load_error(tmp_path, GOOD + b'{"hypothesis": "h", "idx": 1, "label": "entailment"}\n')
    assert message == f"{path}:2: missing field 'premise' for task rte"


def test_bad_label(tmp_path):
    path = rte_file(tmp_path, b"")
    message = load_error(tmp_path, b'{"premise": "p", "hypothesis": "h", "idx": 0, "label": "maybe"}\n')
    assert message.startswith(f"{path}:1: label 'maybe' not allowed for task rte; "
                              "allowed: entailment, not_entailment")


def test_unknown_split():
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        load_split(get_task("rte"), FIXTURES, "dev")
