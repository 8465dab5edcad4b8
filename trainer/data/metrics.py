"""Official SuperGLUE metrics on generated text, plus the SMoP code's variants.

Scale: every metric is a percentage in [0, 100], like the SuperGLUE leaderboard, and so is
`superglue_average`.

Predictions are strings keyed by `idx_key(example.idx)`. Label tasks compare the normalised
prediction with the normalised label words; a prediction that is missing or matches no label word
is wrong: it lowers accuracy, EM and the recall of its gold class, but is a false positive of no
class (there is no class it could be counted for).
"""
from __future__ import annotations

import re
import string
from collections import Counter

from trainer.data.tasks import Example, Task

VARIANTS = ("official", "smop")
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation)


def normalize(text: str) -> str:
    """SQuAD-style normalisation: lower-case, drop punctuation and a/an/the, collapse whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def idx_key(idx):
    """A hashable key for an `Example.idx`: nested dicts become sorted ((key, value), ...) tuples."""
    if isinstance(idx, dict):
        return tuple(sorted((k, idx_key(v)) for k, v in idx.items()))
    if isinstance(idx, list):
        return tuple(idx_key(v) for v in idx)
    return idx


def _pct(numerator: float, denominator: float) -> float:
    return 100.0 * numerator / denominator if denominator else 0.0


def _f1(tp: int, fp: int, fn: int) -> float:
    """F1 in [0, 1]; 0 when there are no true positives (sklearn's zero_division=0)."""
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def _predicted_labels(task: Task, examples: list[Example], predictions: dict) -> list[int | None]:
    """Label index of each example's prediction; None when missing or not a label word."""
    words = {normalize(word): i for i, word in enumerate(task.label_words)}
    out = []
    for ex in examples:
        pred = predictions.get(idx_key(ex.idx))
        out.append(words.get(normalize(pred)) if isinstance(pred, str) else None)
    return out


def _macro_f1(gold: list[int], pred: list[int | None]) -> float:
    """sklearn's f1_score(average="macro") over the classes present in gold or predictions."""
    classes = set(gold) | {p for p in pred if p is not None}
    scores = []
    for c in sorted(classes):
        tp = sum(g == c and p == c for g, p in zip(gold, pred))
        fp = sum(g != c and p == c for g, p in zip(gold, pred))
        fn = sum(g == c and p != c for g, p in zip(gold, pred))
        scores.append(_f1(tp, fp, fn))
    return 100.0 * sum(scores) / len(scores)


def _accuracy(gold: list[int], pred: list[int | None]) -> float:
    return _pct(sum(g == p for g, p in zip(gold, pred)), len(gold))


def _multirc(examples: list[Example], gold: list[int], pred: list[int | None]) -> dict[str, float]:
    """F1a: binary F1 over all answer options, positive class True (label 1); EM: the fraction of
    questions whose answer options are all right (official MultiRC definitions)."""
    tp = sum(g == 1 and p == 1 for g, p in zip(gold, pred))
    fp = sum(g == 0 and p == 1 for g, p in zip(gold, pred))
    fn = sum(g == 1 and p != 1 for g, p in zip(gold, pred))
    questions: dict = {}
    for ex, g, p in zip(examples, gold, pred):
        key = (idx_key(ex.idx["paragraph"]), idx_key(ex.idx["question"]))
        questions[key] = questions.get(key, True) and g == p
    return {"f1a": 100.0 * _f1(tp, fp, fn),
            "em": _pct(sum(questions.values()), len(questions))}


def token_f1(prediction: str, gold: str) -> float:
    """SQuAD token F1 in [0, 1] between normalised strings."""
    pred_tokens, gold_tokens = normalize(prediction).split(), normalize(gold).split()
    same = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_tokens), same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def _record(examples: list[Example], predictions: dict) -> dict[str, float]:
    """ReCoRD: per query, the max over gold answers of token F1 and of EM; averaged over queries.

    Training-style examples (one per answer) of the same query are merged, so each query counts once.
    """
    queries: dict = {}
    for ex in examples:
        queries.setdefault(idx_key(ex.idx), set()).update(ex.answers)
    if not all(queries.values()):
        raise ValueError("task record: cannot score queries without gold answers (test split?)")
    f1 = em = 0.0
    for key, answers in queries.items():
        pred = predictions.get(key)
        if not isinstance(pred, str):
            continue  # missing: scores 0
        f1 += max(token_f1(pred, a) for a in answers)
        em += max(float(normalize(pred) == normalize(a)) for a in answers)
    return {"f1": _pct(f1, len(queries)), "em": _pct(em, len(queries))}


def _exact_match(examples: list[Example], predictions: dict) -> dict[str, float]:
    hits = sum(isinstance(p := predictions.get(idx_key(ex.idx)), str)
               and normalize(p) == normalize(ex.target) for ex in examples)
    return {"exact_match": _pct(hits, len(examples))}


def score(task: Task, examples: list[Example], predictions: dict,
          variant: str = "official") -> dict[str, float]:
    """Metrics of `predictions` ({idx_key(idx): predicted text}) on labelled `examples`, in [0, 100].

    official: accuracy (boolq, copa, rte, wic, wsc); CB accuracy and macro_f1; MultiRC f1a and em;
    ReCoRD f1 and em; jsonl exact_match.
    smop: as official, except the SMoP code's `cb_accuracy_only` (CB: accuracy) and
    `multirc_macro_f1` (MultiRC: macro-F1 over the False/True classes of all answer options).
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown metric variant {variant!r}; known: {', '.join(VARIANTS)}")
    if not examples:
        raise ValueError(f"no examples to score for task {task.name}")
    if task.metric == "max_f1_em":
        return _record(examples, predictions)
    if task.metric == "exact_match":
        return _exact_match(examples, predictions)
    if any(ex.label is None for ex in examples):
        raise ValueError(f"task {task.name}: cannot score unlabelled examples (test split?)")
    gold = [ex.label for ex in examples]
    pred = _predicted_labels(task, examples, predictions)
    if task.metric == "accuracy":
        return {"accuracy": _accuracy(gold, pred)}
    if task.metric == "accuracy_macro_f1":
        if variant == "smop":
            return {"accuracy": _accuracy(gold, pred)}
        return {"accuracy": _accuracy(gold, pred), "macro_f1": _macro_f1(gold, pred)}
    if task.metric == "f1a_em":
        if variant == "smop":
            return {"macro_f1": _macro_f1(gold, pred)}
        return _multirc(examples, gold, pred)
    raise ValueError(f"task {task.name}: unknown metric {task.metric!r}")


def superglue_average(results: dict[str, dict[str, float]]) -> float:
    """The SuperGLUE score: average each task's metrics first (CB acc/F1, MultiRC F1a/EM, ReCoRD
    F1/EM), then average over tasks. Inputs and output are on the 0-100 scale."""
    if not results:
        raise ValueError("superglue_average: no task results")
    per_task = []
    for name, metrics in results.items():
        if not metrics:
            raise ValueError(f"superglue_average: no metrics for task {name}")
        per_task.append(sum(metrics.values()) / len(metrics))
    return sum(per_task) / len(per_task)
