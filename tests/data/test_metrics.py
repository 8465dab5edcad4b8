"""Metric values computed by hand on small cases (all metrics are on the 0-100 scale)."""

import pytest

from trainer.data.metrics import idx_key, normalize, score, superglue_average, token_f1
from trainer.data.readers import load_split
from trainer.data.tasks import Example, get_task
from tests.launch import FIXTURES

CB = get_task("cb")
E, C, N = 0, 1, 2  # CB label indices: entailment, contradiction, neutral


def cb_examples(labels):
    return [Example(f"x{i}", CB.label_words[l], i, l) for i, l in enumerate(labels)]


def test_normalize_and_idx_key():
    assert normalize("  The Answer, an  apple!\t") == "answer apple"
    assert normalize("not_entailment") != normalize("entailment")
    assert idx_key({"question": 1, "paragraph": 0, "answer": 2}) == (
        ("answer", 2), ("paragraph", 0), ("question", 1))
    assert idx_key(5) == 5


def test_accuracy_normalises_and_counts_missing_as_wrong():
    task = get_task("rte")
    examples = load_split(task, FIXTURES, "val")  # entailment, not, entailment, not
    predictions = {0: "Entailment.", 1: "not_entailment", 2: "not_entailment"}  # 3 missing
    assert score(task, examples, predictions) == {"accuracy": 25.0 * 2}


def test_empty_predictions_score_zero():
    assert score(CB, cb_examples([E, C, N]), {}) == {"accuracy": 0.0, "macro_f1": 0.0}
    multirc = get_task("multirc")
    assert score(multirc, load_split(multirc, FIXTURES, "val"), {}) == {"f1a": 0.0, "em": 0.0}
    record = get_task("record")
    assert score(record, load_split(record, FIXTURES, "val"), {}) == {"f1": 0.0, "em": 0.0}


def test_cb_macro_f1_all_one_class():
    # entailment: P=2/4, R=2/2, F1=2/3; contradiction and neutral: F1=0.
    result = score(CB, cb_examples([E, C, N, E]), {i: "entailment" for i in range(4)})
    assert result["accuracy"] == 50.0
    assert result["macro_f1"] == pytest.approx(100 * (2 / 3) / 3)


def test_cb_macro_f1_classes_in_gold_or_predictions_only():
    # gold e e c, predicted e n c: e F1 2/3, c F1 1, n (predicted only) F1 0.
    result = score(CB, cb_examples([E, E, C]), {0: "entailment", 1: "neutral", 2: "contradiction"})
    assert result["macro_f1"] == pytest.approx(100 * (2 / 3 + 1 + 0) / 3)
    # neutral neither in gold nor predicted: left out, as sklearn does.
    result = score(CB, cb_examples([E, C]), {0: "entailment", 1: "contradiction"})
    assert result["macro_f1"] == 100.0


def test_cb_smop_variant_is_accuracy_only():
    assert score(CB, cb_examples([E, C]), {0: "entailment"}, variant="smop") == {"accuracy": 50.0}


def multirc_paragraph0():
    task = get_task("multirc")
    examples = [ex for ex in load_split(task, FIXTURES, "val") if ex.idx["paragraph"] == 0]
    # gold: q0 -> answers 0 T, 1 F, 2 T; q1 -> answers 3 T, 4 F
    assert [ex.label for ex in examples] == [1, 0, 1, 1, 0]
    return task, examples


def preds(examples, words):
    return {idx_key(ex.idx): w for ex, w in zip(examples, words) if w is not None}


def test_multirc_f1a_and_em_by_hand():
    task, examples = multirc_paragraph0()
    # Answer 2 wrong: q0 fails, q1 right. TP 2 (a0, a3), FP 0, FN 1 (a2): F1a = 4/5.
    result = score(task, examples, preds(examples, ["True", "False", "False", "True", "False"]))
    assert result == {"f1a": pytest.approx(80.0), "em": 50.0}
    # a2 missing (a FN), a4 not a label word (wrong, but no FP): TP 2, FP 0, FN 1; both questions fail.
    result = score(task, examples, preds(examples, ["True", "false", None, "True", "maybe"]))
    assert result == {"f1a": pytest.approx(80.0), "em": 0.0}


def test_multirc_smop_macro_f1():
    task, examples = multirc_paragraph0()
    # True: TP 2, FP 1 (a4), FN 1 (a2) -> 2/3.  False: TP 1 (a1), FP 1 (a2), FN 1 (a4) -> 1/2.
    result = score(task, examples, preds(examples, ["True", "False", "False", "True", "True"]),
                   variant="smop")
    assert result == {"macro_f1": pytest.approx(100 * (2 / 3 + 1 / 2) / 2)}


def test_record_max_over_gold_answers():
    task = get_task("record")
    examples = load_split(task, FIXTURES, "val")
    kestrel = idx_key({"passage": 1, "query": 2})  # gold: "Kestrel", "Kestrel Cup"
    oskey = idx_key({"passage": 0, "query": 0})  # gold: "Oskey"
    picked = [ex for ex in examples if idx_key(ex.idx) in (kestrel, oskey)]
    # "Kestrel Cup final": F1 0.8 against "Kestrel Cup" (0.5 against "Kestrel"), EM 0.
    result = score(task, picked, {kestrel: "Kestrel Cup final", oskey: "oskey."})
    assert result == {"f1": pytest.approx(90.0), "em": 50.0}
    assert score(task, picked, {kestrel: "the kestrel cup", oskey: "Oskey"}) == {"f1": 100.0, "em": 100.0}
    # Training layout (one example per answer) counts each query once.
    train = [ex for ex in load_split(task, FIXTURES, "val", train=True)
             if idx_key(ex.idx) in (kestrel, oskey)]
    assert len(train) == 3
    assert score(task, train, {kestrel: "Kestrel Cup final", oskey: "oskey."}) == result


def test_token_f1():
    assert token_f1("x b c", "b c d") == pytest.approx(2 / 3)
    assert token_f1("", "x") == 0.0


def test_jsonl_exact_match():
    task = get_task("jsonl")
    examples = [Example("q", "The Cat", 0, None), Example("q", "dog", 1, None)]
    assert score(task, examples, {0: "cat", 1: "dogs"}) == {"exact_match": 50.0}


def test_score_errors():
    with pytest.raises(ValueError, match="unknown metric variant 'x'"):
        score(CB, cb_examples([E]), {}, variant="x")
    with pytest.raises(ValueError, match="no examples"):
        score(CB, [], {})
    with pytest.raises(ValueError, match="unlabelled"):
        score(CB, [Example("x", "", 0, None)], {})


def test_superglue_average_averages_within_tasks_first():
    results = {"cb": {"accuracy": 80.0, "macro_f1": 60.0}, "rte": {"accuracy": 70.0},
               "multirc": {"f1a": 50.0, "em": 30.0}}
    assert superglue_average(results) == pytest.approx((70 + 70 + 40) / 3)
    with pytest.raises(ValueError):
        superglue_average({})
