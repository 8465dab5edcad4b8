"""Text-to-text formats, Hugging Face/official equivalence, task names and record errors."""
import json
import sys
import types

import pytest

from trainer.data.readers import load_hub_split, load_split, read_jsonl
from trainer.data.tasks import TASKS, Example, get_task
from tests.launch import FIXTURES

SUPERGLUE = ["boolq", "cb", "copa", "multirc", "record", "rte", "wic", "wsc"]


def first(name, split="train", **kwargs):
    return load_split(get_task(name), FIXTURES, split, **kwargs)[0]


def test_classification_formats():
    assert first("boolq") == Example(
        "boolq passage: Kelt is an invented planet whose single moon is a ball of ice and dust. "
        "question: is the moon of kelt made of ice", "True", 0, 1)
    assert first("cb") == Example(
        "cb hypothesis: the garden needs rain premise: A: I think the garden needs rain. "
        "B: It hasn't rained for weeks.", "entailment", 0, 0)
    assert first("copa") == Example(
        "choice1: The water boiled. choice2: The water froze. premise: The kettle whistled. "
        "question: cause", "choice1", 0, 0)
    assert first("rte") == Example(
        "rte sentence1: The lighthouse on Mirrow Point was painted blue in 1990. "
        "sentence2: The lighthouse is blue.", "entailment", 0, 0)
    assert first("wic") == Example(
        "wic sentence1: She sat on the bank of the stream. sentence2: He put the coins in the bank. "
        "word: bank", "False", 0, 0)
    assert first("wsc") == Example(
        "wsc: Mara handed the lamp to Jo because *she* wanted it fixed. referent: Mara", "True", 0, 1)


def test_multirc_expands_paragraph_with_nested_idx():
    examples = load_split(get_task("multirc"), FIXTURES, "train")
    paragraph0 = [ex for ex in examples if ex.idx["paragraph"] == 0]
    assert len(paragraph0) == 5  # 2 questions: 3 + 2 answers
    assert paragraph0[4].idx == {"paragraph": 0, "question": 1, "answer": 4}
    assert paragraph0[4].target == "False" and paragraph0[4].label == 0
    assert paragraph0[0].input == (
        "question: How many goats did Ilsa keep? answer: Three paragraph: <b>Sent 1: </b>Ilsa kept "
        "three goats and a dog on her farm.<br><b>Sent 2: </b>Every morning she walked the goats to "
        "the hill.<br><b>Sent 3: </b>The dog stayed home to guard the gate.<br>")


def test_record_format_train_and_eval():
    task = get_task("record")
    text = ("record query: Officials of the @placeholder confirmed the replay. entities: Dunmere, "
            "Kestrel, Kestrel Cup passage: The Kestrel Cup final in Dunmere ended in a draw. Kestrel "
            "officials said Dunmere will host a replay. Final ends level! Replay set for Dunmere")
    idx = {"passage": 1, "query": 2}
    train = [ex for ex in load_split(task, FIXTURES, "train") if ex.idx == idx]
    assert train == [Example(text, "Kestrel", idx, None, ("Kestrel", "Kestrel Cup")),
                     Example(text, "Kestrel Cup", idx, None, ("Kestrel", "Kestrel Cup"))]
    val = [ex for ex in load_split(task, FIXTURES, "val") if ex.idx == idx]
    assert val == [Example(text, "Kestrel", idx, None, ("Kestrel", "Kestrel Cup"))]
    # "@highlight" after text without final punctuation becomes ". ".
    assert "hospital. Velmar opens ferry line to Oskey. Mayor Ada" in first("record").input


def test_wsc_marks_pronoun_with_punctuation_and_shifted_index():
    task = get_task("wsc")
    record = {"text": "The cat saw Tim and chased him, then slept.", "idx": 7, "label": False,
              "target": {"span1_text": "The cat", "span1_index": 0,
                         "span2_text": "him", "span2_index": 5}}  # "him," is word 6
    (ex,) = task.examples(record)
    assert ex.input == "wsc: The cat saw Tim and chased *him*, then slept. referent: The cat"
    assert ex.target == "False"


def to_hub(name, record):
    """The rows the Hugging Face super_glue builder makes from one official record."""
    task = TASKS[name]
    if name == "multirc":
        p = record["passage"]
        return [{"paragraph": p["text"], "question": q["question"], "answer": a["text"],
                 "label": int(a["label"]),
                 "idx": {"paragraph": record["idx"], "question": q["idx"], "answer": a["idx"]}}
                for q in p["questions"] for a in q["answers"]]
    if name == "record":
        text = record["passage"]["text"]
        entities = sorted({text[e["start"]:e["end"] + 1] for e in record["passage"]["entities"]})
        return [{"passage": text, "query": qa["query"], "entities": entities,
                 "answers": sorted({a["text"] for a in qa["answers"]}),
                 "idx": {"passage": record["idx"], "query": qa["idx"]}} for qa in record["qas"]]
    row = {k: v for k, v in record.items() if k != "target"}
    row.update(record.get("target", {}) if name == "wsc" else {})
    label = record["label"]
    row["label"] = task.label_words.index(label) if isinstance(label, str) else int(label)
    return [row]


@pytest.mark.parametrize("name", SUPERGLUE)
@pytest.mark.parametrize("train", [True, False])
def test_hub_records_give_same_examples(name, train):
    task = get_task(name)
    records = read_jsonl(FIXTURES / task.dirname / "train.jsonl")
    official = [ex for r in records for ex in task.examples(r, train=train)]
    hub = [ex for r in records for row in to_hub(name, r) for ex in task.examples(row, train=train)]
    assert hub == official
    assert isinstance(hub[0].label, int) or name == "record"


def test_load_hub_split_feeds_rows_to_examples(monkeypatch):
    # The hub is unreachable here: stand in for `datasets` and check the call and the conversion.
    calls = []
    rows = [row for r in read_jsonl(FIXTURES / "WSC" / "val.jsonl") for row in to_hub("wsc", r)]
    fake = types.SimpleNamespace(load_dataset=lambda *a, **k: calls.append((a, k)) or rows)
    monkeypatch.setitem(sys.modules, "datasets", fake)
    assert load_hub_split(get_task("wsc"), "val") == load_split(get_task("wsc"), FIXTURES, "val")
    assert calls == [(("super_glue", "wsc.fixed"), {"split": "validation"})]


def test_hub_test_rows_are_unlabelled():
    (ex,) = get_task("rte").examples({"premise": "a", "hypothesis": "b", "idx": 3, "label": -1},
                                     labelled=False)
    assert ex.label is None and ex.target == ""


def test_unknown_task():
    with pytest.raises(ValueError, match=r"^unknown task 'xyz'; known: boolq, cb, copa, multirc, "):
        get_task("xyz")


def test_missing_nested_field(tmp_path):
    record = json.loads((FIXTURES / "MultiRC" / "train.jsonl").read_text().splitlines()[0])
    del record["passage"]["questions"][0]["answers"][1]["label"]
    with pytest.raises(ValueError, match=r"^f\.jsonl:1: missing field "
                                         r"'passage\.questions\[0\]\.answers\[1\]\.label' for task multirc$"):
        get_task("multirc").examples(record, "f.jsonl:1")
