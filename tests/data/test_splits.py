"""Run splits (official / paper), the paper's dev carving, per-task caps, and the hub path's one-line failure."""
import sys
import types

import pytest

from tests.launch import run_trainer
from trainer.config import DataConfig, DataSource, Splits
from trainer.data.readers import load_split
from trainer.data.splits import carve_dev, load_splits, paper_splits
from trainer.data.tasks import get_task
from tests.launch import FIXTURES



def test_official_splits_of_the_embedded_data():
    splits = load_splits(DataConfig(task="rte"))
    assert (splits.train.name, splits.eval.name, splits.test) == ("train", "val", None)
    assert (len(splits.train.examples), len(splits.eval.examples)) == (800, 128)
    mixture = load_splits(DataConfig())  # the default: the four jsonl:NAME sub-tasks of the synthetic mixture
    assert (len(mixture.train.examples), len(mixture.eval.examples)) == (2000, 200)
    assert mixture.train.task_ids == [t for t in range(4) for _ in range(500)]
    assert mixture.train.examples[500].input.split()[0][0] == "b"  # reverse: region b


def test_paper_splits_of_a_mixture():
    cfg = DataConfig(task="rte,cb", data_dir=str(FIXTURES), splits=Splits.PAPER, dev_fraction=0.5)
    splits = load_splits(cfg)
    rte, cb = (paper_splits(get_task(n), FIXTURES, 0.5) for n in ("rte", "cb"))
    assert splits.train.examples == rte["train"] + cb["train"]
    assert splits.eval.examples == rte["dev"] + cb["dev"] and splits.eval.name == "dev"
    assert splits.test.examples == rte["test"] + cb["test"] and splits.test.name == "test"
    assert splits.test.examples[:4] == load_split(get_task("rte"), FIXTURES, "val")  # test = official val
    assert splits.eval.task_ids == [0] * len(rte["dev"]) + [1] * len(cb["dev"])
    dev_idx = {ex.idx for ex in splits.eval.examples[: len(rte["dev"])]}
    assert dev_idx.isdisjoint(ex.idx for ex in splits.train.examples[: len(rte["train"])])


def test_max_eval_examples_caps_each_task_not_the_concatenation():
    cfg = DataConfig(task="rte,cb", data_dir=str(FIXTURES), max_eval_examples=3)
    splits = load_splits(cfg)
    assert splits.eval.task_ids == [0, 0, 0, 1, 1, 1]
    assert len(splits.train.examples) == 12  # training data is never capped


def test_empty_dev_set_is_a_clear_error():
    cfg = DataConfig(task="rte", data_dir=str(FIXTURES), splits=Splits.PAPER, dev_fraction=0.1)
    with pytest.raises(ValueError, match=r"^data.task=rte: the dev split has no examples \(raise data.dev_fraction"):
        load_splits(cfg)


def test_hub_failure_is_one_line(monkeypatch):
    def unreachable(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'super_glue' on the Hub\nTraceback (most recent call last):\n...")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=unreachable))
    cfg = DataConfig(task="rte", source=DataSource.HUB, splits=Splits.PAPER)
    with pytest.raises(ValueError) as err:
        load_splits(cfg)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("data.source=hub: cannot load super_glue/rte split train (ConnectionError: "
                              "Couldn't reach 'super_glue' on the Hub); use data.source=local")


def test_hub_paper_splits_carve_the_hub_rows(monkeypatch):
    rows = {"train": [{"premise": f"p{i}", "hypothesis": "h", "idx": i, "label": i % 2} for i in range(20)],
            "validation": [{"premise": "q", "hypothesis": "h", "idx": 0, "label": 1}]}
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(
        load_dataset=lambda name, config, split: rows[split]))
    splits = load_splits(DataConfig(task="rte", source=DataSource.HUB, splits=Splits.PAPER))
    assert [ex.idx for ex in splits.eval.examples] == [18, 19]  # the last 10% of each label
    assert len(splits.train.examples) == 18 and [ex.target for ex in splits.test.examples] == ["not_entailment"]


@pytest.mark.multiprocess
def test_entry_point_reports_an_unreachable_hub_in_one_line(tmp_path):
    proc = run_trainer(tmp_path, "data.source=hub", check=False,
                       env={"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "data.source=hub: cannot load super_glue/rte" in errors[0], proc.stderr[-2000:]


def test_carve_dev_takes_last_tenth_of_each_label():
    labels = ["entailment"] * 20 + ["not_entailment"] * 10
    records = [{"premise": "p", "hypothesis": "h", "idx": i, "label": l}
               for i, l in enumerate(labels[::3] + labels[1::3] + labels[2::3])]
    train, dev = carve_dev(records, get_task("rte"))
    ent = [r["idx"] for r in records if r["label"] == "entailment"]
    nent = [r["idx"] for r in records if r["label"] == "not_entailment"]
    assert [r["idx"] for r in dev] == sorted(ent[-2:] + nent[-1:])
    assert len(train) == 27 and not {r["idx"] for r in train} & {r["idx"] for r in dev}
    # HF integer labels carve identically.
    hub = [{**r, "label": 0 if r["label"] == "entailment" else 1} for r in records]
    assert [r["idx"] for r in carve_dev(hub, get_task("rte"))[1]] == [r["idx"] for r in dev]


def test_carve_dev_keeps_flat_multirc_paragraphs_whole():
    rows = [{"paragraph": f"p{p}", "question": "q", "answer": f"a{a}", "label": a % 2,
             "idx": {"paragraph": p, "question": p, "answer": a}} for p in range(10) for a in range(3)]
    train, dev = carve_dev(rows, get_task("multirc"))
    assert {r["idx"]["paragraph"] for r in dev} == {9} and len(dev) == 3 and len(train) == 27


def test_paper_splits_use_val_as_test():
    task = get_task("cb")
    splits = paper_splits(task, FIXTURES, fraction=0.5)
    assert splits["test"] == load_split(task, FIXTURES, "val")
    assert [ex.idx for ex in splits["dev"]] == [3, 4, 5]  # last half of each of the 3 labels
    assert [ex.idx for ex in splits["train"]] == [0, 1, 2]
