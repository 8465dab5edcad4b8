"""A synthetic multi-task language for the offline accuracy benchmark (docs/benchmark-accuracy.md).

Symbols come from regions of a small vocabulary: region `a` is a0..a7, `b` is b0..b7, and so on; within a
region the digit orders the symbols. An example applies one operation to a sequence of 3 to 6 symbols:

    copy     a3 a1 a5       -> a3 a1 a5
    reverse  b3 b1 b5       -> b5 b1 b3
    sort     c3 c1 c5       -> c1 c3 c5
    count    d3 d1 d5       -> three
    classify e3 e0 e5       -> yes        (yes when the sequence holds the region's symbol 0)

Pre-training text carries the operation as an instruction ("reverse : b3 b1 b5") and draws the symbols of
every operation from every region, so the model learns to follow the instruction whatever the symbols.
The tuning mixture drops the instruction and ties each operation to one region (copy: a, reverse: b,
sort: c, count: d): the task is recognisable from the input, by a router reading the mean input embedding
or by the model itself, but one shared prompt cannot say which operation to apply.
"""
from __future__ import annotations

import random

REGIONS = "abcde"
SYMBOLS_PER_REGION = 8
NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven")
OPERATIONS = ("copy", "reverse", "sort", "count", "classify")
MIXTURE = {"copy": "a", "reverse": "b", "sort": "c", "count": "d"}
"""The tuning mixture: each sub-task and the one region its inputs use."""
MIN_LEN, MAX_LEN = 3, 6


def vocabulary() -> list[str]:
    """Every word of the language: made single tokens of the tokenizer."""
    symbols = [f"{r}{i}" for r in REGIONS for i in range(SYMBOLS_PER_REGION)]
    return symbols + list(NUMBERS) + list(OPERATIONS) + ["yes", "no", ":"]


def apply(operation: str, region: str, digits: list[int]) -> str:
    """The target text of `operation` on the symbols `region` + digits."""
    words = [f"{region}{i}" for i in digits]
    if operation == "copy":
        return " ".join(words)
    if operation == "reverse":
        return " ".join(reversed(words))
    if operation == "sort":
        return " ".join(f"{region}{i}" for i in sorted(digits))
    if operation == "count":
        return NUMBERS[len(digits)]
    if operation == "classify":
        return "yes" if 0 in digits else "no"
    raise ValueError(f"unknown operation '{operation}'")


def example(rng: random.Random, operation: str, region: str) -> tuple[str, str]:
    """(symbols text, target text) of one random example."""
    digits = [rng.randrange(SYMBOLS_PER_REGION) for _ in range(rng.randint(MIN_LEN, MAX_LEN))]
    return " ".join(f"{region}{i}" for i in digits), apply(operation, region, digits)


def pretraining_pair(rng: random.Random) -> tuple[str, str]:
    """An instructed example: any operation, symbols from any region."""
    operation, region = rng.choice(OPERATIONS), rng.choice(REGIONS)
    source, target = example(rng, operation, region)
    return f"{operation} : {source}", target


def mixture_records(rng: random.Random, per_task: int, split: str) -> list[dict]:
    """The instruction-free tuning mixture, interleaved, as jsonl records; idx names the sub-task."""
    records = []
    for i in range(per_task):
        for operation, region in MIXTURE.items():
            source, target = example(rng, operation, region)
            records.append({"idx": f"{split}-{operation}-{i:05d}", "input": source, "target": target})
    return records


def subtask_of(idx: str) -> str:
    return idx.split("-")[1]
