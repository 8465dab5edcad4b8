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
or by the model itself, but one shared prompt cannot say which operation to apply. It is written as the
trainer's `jsonl:NAME` sub-tasks, one folder each:

    python -m tools.assets.synthetic --out trainer/assets/data     # the embedded default's copy/ reverse/ sort/ count/
"""
from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

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


MIXTURE_TASKS = ",".join(f"jsonl:{operation}" for operation in MIXTURE)
"""The trainer's data.task for the mixture."""


def write_mixture(folder, seed: int, train_per_task: int, val_per_task: int) -> None:
    """folder/<operation>/{train,val}.jsonl for each sub-task of MIXTURE, deterministic from `seed`."""
    rng = random.Random(1000 + seed)
    for split, n in (("train", train_per_task), ("val", val_per_task)):
        for operation, region in MIXTURE.items():
            path = Path(folder) / operation / f"{split}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "w") as f:
                for i in range(n):
                    source, target = example(rng, operation, region)
                    f.write(json.dumps({"idx": i, "input": source, "target": target}) + "\n")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Write the instruction-free mixture as jsonl:NAME sub-tasks.")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[2] / "trainer" / "assets" / "data"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-per-task", type=int, default=500)
    parser.add_argument("--val-per-task", type=int, default=50)
    args = parser.parse_args(argv)
    write_mixture(args.out, args.seed, args.train_per_task, args.val_per_task)
    print(f"wrote {', '.join(MIXTURE)} under {args.out}")


if __name__ == "__main__":
    main()
