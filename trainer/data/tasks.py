"""SuperGLUE tasks in text-to-text form (docs/method.md §8).

A `Task` turns one raw record into `Example`s. Records may come from the official SuperGLUE jsonl
distribution (`TASK/{train,val,test}.jsonl`: string or bool labels, nested MultiRC and ReCoRD) or from
the Hugging Face `super_glue` dataset (integer labels, one flat row per MultiRC answer or ReCoRD query);
both give the same Examples. Errors are one line naming the record's `where` (`file:line`) and the
offending key. Reading files and the hub is `readers.py`'s; carving a dev set is `splits.py`'s.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable


@dataclass(frozen=True)
class Example:
    """One model input and its target, keyed by the official scorer's `idx`."""

    input: str
    """Model input text."""
    target: str
    """Target text: a label word, or the answer entity for ReCoRD ("" when unlabelled)."""
    idx: object
    """Prediction key: an int, or MultiRC {"paragraph", "question", "answer"}, ReCoRD {"passage", "query"}."""
    label: int | None
    """Index into `Task.label_words`; None for open-answer tasks and unlabelled (test) records."""
    answers: tuple[str, ...] = ()
    """ReCoRD: all gold answer strings, sorted; empty for other tasks."""


@dataclass(frozen=True)
class Task:
    """A SuperGLUE task (or a generic `jsonl` / `jsonl:NAME` task): its folder, label words and metric."""

    name: str
    """Short name, e.g. "rte"."""
    dirname: str
    """Folder of the official distribution, e.g. "RTE" ("" for `jsonl`: files sit in data_dir; NAME for
    `jsonl:NAME`)."""
    label_words: tuple[str, ...] | None
    """Target words indexed by label; None for ReCoRD and `jsonl`."""
    metric: str
    """Official metric name dispatched on by `metrics.score`."""
    hub_config: str = ""
    """Config name of the Hugging Face `super_glue` dataset ("" when there is none)."""
    build: Callable = field(default=None, repr=False, compare=False)
    """(task, record, where, train, labelled) -> list[Example]; one of the `_build_*` functions."""

    def examples(self, record: dict, where: str = "", *, train: bool = False,
                 labelled: bool = True) -> list[Example]:
        """Convert one raw record (official or HF layout) into Examples.

        Args:
            where: "file:line" for error messages.
            train: ReCoRD only: one Example per gold answer instead of one per query.
            labelled: the label is required; if False (test splits) it may be absent or -1 (HF),
                giving label None and target "".
        """
        where = where or "record"
        if not isinstance(record, dict):
            raise ValueError(f"{where}: expected a JSON object for task {self.name}, "
                             f"got {type(record).__name__}")
        return self.build(self, record, where, train, labelled)

    @property
    def generic(self) -> bool:
        """A `jsonl` / `jsonl:NAME` task: records hold their own input and target, and may omit idx."""
        return self.build is _build_jsonl


def _get(record: dict, key: str, where: str, task: Task, path: str = ""):
    """record[key], or a one-line error naming the (dotted) field."""
    if not isinstance(record, dict) or key not in record:
        raise ValueError(f"{where}: missing field '{path}{key}' for task {task.name}")
    return record[key]


def label_index(task: Task, record: dict, where: str, labelled: bool, path: str = "") -> int | None:
    """Map an official (str/bool/0-1 int) or HF (int, -1 = unlabelled) label to a label index."""
    value = record.get("label") if isinstance(record, dict) else None
    if value is None or (not labelled and value == -1):
        if labelled:
            raise ValueError(f"{where}: missing field '{path}label' for task {task.name}")
        return None
    words = task.label_words
    if isinstance(value, str) and value in words:
        return words.index(value)
    # bool is an int: False -> 0 -> "False", True -> 1 -> "True", as in the label words' order.
    if isinstance(value, int) and 0 <= value < len(words):
        return int(value)
    allowed = ", ".join(words)
    raise ValueError(f"{where}: label {value!r} not allowed for task {task.name}; "
                     f"allowed: {allowed} (or 0..{len(words) - 1})")


def _example(task: Task, text: str, idx, label: int | None) -> Example:
    target = task.label_words[label] if label is not None else ""
    return Example(input=text, target=target, idx=idx, label=label)


def _template(template: str) -> Callable:
    """Builder for one-input classification tasks: fill `template` with the record's fields."""
    keys = re.findall(r"{(\w+)}", template)

    def build(task, record, where, train, labelled):
        values = {key: _get(record, key, where, task) for key in keys}
        idx = _get(record, "idx", where, task)
        return [_example(task, template.format(**values), idx, label_index(task, record, where, labelled))]

    build.__doc__ = f"Input `{template}`."
    return build


def _build_multirc(task, record, where, train, labelled):
    """`question: {question} answer: {answer} paragraph: {paragraph}`, one Example per answer.

    Official: {"idx", "passage": {"text", "questions": [{"idx", "question", "answers":
    [{"idx", "text", "label"}]}]}}. HF: flat {"paragraph", "question", "answer", "idx": {...}, "label"}.
    """
    if not isinstance(record.get("passage"), dict):  # Hugging Face: one row per answer already
        text = "question: {question} answer: {answer} paragraph: {paragraph}".format(
            **{k: _get(record, k, where, task) for k in ("question", "answer", "paragraph")})
        return [_example(task, text, _get(record, "idx", where, task),
                         label_index(task, record, where, labelled))]
    paragraph = _get(record, "passage", where, task)
    text = _get(paragraph, "text", where, task, "passage.")
    out = []
    for qi, question in enumerate(_get(paragraph, "questions", where, task, "passage.")):
        qpath = f"passage.questions[{qi}]."
        for ai, answer in enumerate(_get(question, "answers", where, task, qpath)):
            apath = f"{qpath}answers[{ai}]."
            idx = {"paragraph": _get(record, "idx", where, task),
                   "question": _get(question, "idx", where, task, qpath),
                   "answer": _get(answer, "idx", where, task, apath)}
            out.append(_example(
                task, f"question: {_get(question, 'question', where, task, qpath)} "
                      f"answer: {_get(answer, 'text', where, task, apath)} paragraph: {text}",
                idx, label_index(task, answer, where, labelled, apath)))
    return out


def _record_passage(text: str) -> str:
    """T5's ReCoRD passage cleaning: each "\\n@highlight\\n" becomes ". " (or a space after punctuation)."""
    text = re.sub(r"([.?!\"'])\n@highlight\n", r"\1 ", text)
    return re.sub(r"\n@highlight\n", ". ", text)


def _build_record(task, record, where, train, labelled):
    """T5's `record query: {query} entities: {e1, e2, ...} passage: {passage}`.

    The query keeps its `@placeholder`; entities are the sorted distinct entity strings (as the HF
    dataset lists them). Training: one Example per gold answer (target = that answer); evaluation:
    one per query, target = first answer, all answers in `answers`.
    Official: {"idx", "passage": {"text", "entities": [{"start", "end"}]}, "qas": [{"idx", "query",
    "answers": [{"start", "end", "text"}]}]}, `end` inclusive. HF: flat {"passage", "query",
    "entities", "answers", "idx": {"passage", "query"}}.
    """
    if isinstance(record.get("passage"), dict):
        passage = record["passage"]
        text = _get(passage, "text", where, task, "passage.")
        entities = set()
        for i, span in enumerate(_get(passage, "entities", where, task, "passage.")):
            start, end = (_get(span, k, where, task, f"passage.entities[{i}].") for k in ("start", "end"))
            entities.add(text[start:end + 1])  # official `end` is inclusive
        entities = sorted(entities)
        queries = []
        for qi, qa in enumerate(_get(record, "qas", where, task)):
            path = f"qas[{qi}]."
            if labelled:
                _get(qa, "answers", where, task, path)
            answers = [a["text"] for a in qa.get("answers", [])]
            idx = {"passage": _get(record, "idx", where, task),
                   "query": _get(qa, "idx", where, task, path)}
            queries.append((_get(qa, "query", where, task, path), answers, idx, path))
    else:
        text = _get(record, "passage", where, task)
        entities = sorted(set(_get(record, "entities", where, task)))
        answers = _get(record, "answers", where, task) if labelled else record.get("answers", [])
        queries = [(_get(record, "query", where, task), answers, _get(record, "idx", where, task), "")]
    out = []
    for query, answers, idx, path in queries:
        answers = tuple(sorted(set(answers)))
        if labelled and not answers:
            raise ValueError(f"{where}: field '{path}answers' is empty for task {task.name}")
        text_in = (f"record query: {query} entities: {', '.join(entities)} "
                   f"passage: {_record_passage(text)}")
        targets = answers if train else answers[:1] or ("",)
        out += [Example(text_in, target, idx, None, answers) for target in targets]
    return out


def _mark_pronoun(words: list[str], index: int, pronoun: str) -> list[str] | None:
    """Put asterisks around the pronoun at word `index` (trailing punctuation stays outside)."""
    n = len(pronoun.split(" "))
    span = " ".join(words[index:index + n])
    if index < 0 or not span.lower().startswith(pronoun.lower()):
        return None
    rest = span[len(pronoun):]
    if rest and rest[0].isalnum():  # "he" must not match "her"
        return None
    return words[:index] + [f"*{span[:len(pronoun)]}*{rest}"] + words[index + n:]


def _build_wsc(task, record, where, train, labelled):
    """T5's marked-pronoun input plus the candidate: `wsc: {text with *pronoun*} referent: {span1}`.

    T5's `wsc_simple` marks the pronoun with asterisks and asks for the referent's text. With
    True/False targets the candidate (span1_text) must be in the input too, otherwise records that
    differ only in their candidate get identical inputs and opposite labels.
    Official: spans nested under "target"; HF: span fields at the top level.
    """
    spans = record["target"] if isinstance(record.get("target"), dict) else record
    path = "target." if spans is not record else ""
    text = _get(record, "text", where, task)
    pronoun = _get(spans, "span2_text", where, task, path)
    index = _get(spans, "span2_index", where, task, path)
    words = text.split(" ")
    # Some records' span2_index is off by a word or two; take the nearest matching word.
    for i in sorted(range(len(words)), key=lambda i: abs(i - index)):
        marked = _mark_pronoun(words, i, pronoun)
        if marked:
            break
    else:
        raise ValueError(f"{where}: span2_text {pronoun!r} not found in text for task {task.name}")
    text_in = f"wsc: {' '.join(marked)} referent: {_get(spans, 'span1_text', where, task, path)}"
    return [_example(task, text_in, _get(record, "idx", where, task),
                     label_index(task, record, where, labelled))]


def _build_jsonl(task, record, where, train, labelled):
    """Generic task: the record already holds `input` and `target` (and `idx`)."""
    target = _get(record, "target", where, task) if labelled else record.get("target", "")
    return [Example(str(_get(record, "input", where, task)), str(target),
                    _get(record, "idx", where, task), None)]


_BOOL = ("False", "True")
TASKS = {t.name: t for t in [
    Task("boolq", "BoolQ", _BOOL, "accuracy", "boolq",
         _template("boolq passage: {passage} question: {question}")),
    # The SMoP code spells CB's key "hyopthesis"; docs/method.md §8 corrects it.
    Task("cb", "CB", ("entailment", "contradiction", "neutral"), "accuracy_macro_f1", "cb",
         _template("cb hypothesis: {hypothesis} premise: {premise}")),
    Task("copa", "COPA", ("choice1", "choice2"), "accuracy", "copa",
         _template("choice1: {choice1} choice2: {choice2} premise: {premise} question: {question}")),
    Task("multirc", "MultiRC", _BOOL, "f1a_em", "multirc", _build_multirc),
    Task("record", "ReCoRD", None, "max_f1_em", "record", _build_record),
    Task("rte", "RTE", ("entailment", "not_entailment"), "accuracy", "rte",
         _template("rte sentence1: {premise} sentence2: {hypothesis}")),
    Task("wic", "WiC", _BOOL, "accuracy", "wic",
         _template("wic sentence1: {sentence1} sentence2: {sentence2} word: {word}")),
    # wsc.fixed: the HF config with the corrected span indices.
    Task("wsc", "WSC", _BOOL, "accuracy", "wsc.fixed", _build_wsc),
    Task("jsonl", "", None, "exact_match", "", _build_jsonl),
]}


def get_task(name: str) -> Task:
    """The task called `name`; ValueError listing the known ones otherwise.

    `jsonl:NAME` is the generic task reading `data_dir/NAME/{train,val}.jsonl`: several of them form a
    mixture of your own sub-tasks (`data.task=jsonl:copy,jsonl:sort`), each with its own metrics and row
    of the routing table.
    """
    prefix, _, folder = name.partition(":")
    if prefix == "jsonl" and re.fullmatch(r"[A-Za-z0-9_.-]+", folder):
        return Task(name, folder, None, "exact_match", "", _build_jsonl)
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known: {', '.join(TASKS)}, jsonl:NAME (data_dir/NAME/*.jsonl)")
    return TASKS[name]
