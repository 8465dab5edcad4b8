"""smop-evaluate (trainer/cli/evaluate.py) run as a command, the way users call it."""
import json
import os
import subprocess
import sys

import pytest
from tests.launch import REPO as ROOT

pytestmark = pytest.mark.multiprocess

FIXTURES = ROOT / "tests" / "fixtures" / "superglue"


def evaluate(task, predictions: list, tmp_path, *extra, raw: bytes | None = None):
    path = tmp_path / "preds.jsonl"
    path.write_bytes(raw if raw is not None else
                     "".join(json.dumps(p) + "\n" for p in predictions).encode())
    # Run from elsewhere: the package is found from any directory (here the checkout under test).
    return subprocess.run(
        [sys.executable, "-m", "trainer.cli.evaluate", "--task", task, "--data_dir",
         str(FIXTURES), "--split", "val", "--predictions", str(path), *extra],
        capture_output=True, text=True, cwd=tmp_path, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)}), path


def test_rte_accuracy(tmp_path):
    preds = [{"idx": 0, "prediction": "entailment"}, {"idx": 1, "prediction": "entailment"},
             {"idx": 2, "prediction": "entailment"}, {"idx": 3, "prediction": "not_entailment"}]
    result, _ = evaluate("rte", preds, tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"accuracy": 75.0}


def multirc_predictions():
    # Every answer right except paragraph 0 / question 0 / answer 2 (gold True).
    preds = []
    for line in (FIXTURES / "MultiRC" / "val.jsonl").read_text().splitlines():
        record = json.loads(line)
        for q in record["passage"]["questions"]:
            for a in q["answers"]:
                idx = {"paragraph": record["idx"], "question": q["idx"], "answer": a["idx"]}
                wrong = idx == {"paragraph": 0, "question": 0, "answer": 2}
                preds.append({"idx": idx, "prediction": "False" if wrong or not a["label"] else "True"})
    return preds


def test_multirc_official_and_smop(tmp_path):
    # 12 answers, 7 True: TP 6, FN 1 -> F1a 12/13; 5 questions, one wrong -> EM 80.
    result, _ = evaluate("multirc", multirc_predictions(), tmp_path)
    assert result.returncode == 0, result.stderr
    metrics = json.loads(result.stdout)
    assert metrics == {"f1a": pytest.approx(100 * 12 / 13), "em": 80.0}
    # False: TP 5, FP 1 -> 10/11; macro over the two classes.
    result, _ = evaluate("multirc", multirc_predictions(), tmp_path, "--variant", "smop")
    assert json.loads(result.stdout) == {"macro_f1": pytest.approx(100 * (12 / 13 + 10 / 11) / 2)}


def test_record_nested_idx(tmp_path):
    preds = [{"idx": {"passage": 1, "query": 2}, "prediction": "Kestrel Cup"}]
    result, _ = evaluate("record", preds, tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"f1": 20.0, "em": 20.0}  # 1 of 5 queries


@pytest.mark.parametrize("raw, message", [
    (b'{"idx": 0, "prediction": "entailment"}\n{"idx": 1, "prediction": \n', ":2: not valid JSON ("),
    (b'{"idx": 0, "prediction": "entailment"}\n{"idx": 1}\n', ":2: missing field 'prediction'"),
    (b'{"idx": 0, "prediction": "entailment"}\n{"idx": 0, "prediction": "x"}\n', ":2: duplicate idx 0"),
    (b'{"idx": 99, "prediction": "entailment"}\n', ":1: idx 99 is not in the split"),
])
def test_malformed_predictions_exit_2(tmp_path, raw, message):
    result, path = evaluate("rte", [], tmp_path, raw=raw)
    assert result.returncode == 2
    assert result.stdout == ""
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: {path}{message}")


def test_dev_split_is_the_trainers_carved_dev_set(tmp_path):
    from trainer.data.splits import paper_splits
    from trainer.data.tasks import get_task

    dev = paper_splits(get_task("rte"), FIXTURES, 0.5)["dev"]
    assert len(dev) == 2
    preds = [{"idx": dev[0].idx, "prediction": dev[0].target}, {"idx": dev[1].idx, "prediction": "nonsense"}]
    result, _ = evaluate("rte", preds, tmp_path, "--split", "dev", "--dev_fraction", "0.5")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"accuracy": 50.0}
    train_only = {ex.idx for ex in paper_splits(get_task("rte"), FIXTURES, 0.5)["train"]}.pop()
    result, _ = evaluate("rte", [{"idx": train_only, "prediction": "entailment"}], tmp_path, "--split", "dev",
                         "--dev_fraction", "0.5")
    assert result.returncode == 2 and "is not in the split" in result.stderr
