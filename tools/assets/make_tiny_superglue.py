"""Write the embedded tiny SuperGLUE-format data (trainer/assets/data), deterministically.

    python -m tools.assets.make_tiny_superglue [--out trainer/assets/data] [--seed 0]

RTE-format records (premise, hypothesis, label, idx) built from a small grammar. The label follows a rule a
model can learn (entailment iff every hypothesis word occurs in the premise), and the records come from two
topics whose label mix differs (animals mostly entailed, machines mostly not), so the mean input embedding
that SMoP's router reads carries information a shared single prompt cannot use. The text is invented.
"""
from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

TOPICS = {
    "animals": (["cat", "dog", "horse", "owl", "fox", "goat", "duck", "mouse"],
                ["runs", "sleeps", "eats", "hides", "jumps", "swims"], 0.8),
    "machines": (["engine", "robot", "truck", "pump", "drill", "crane", "radio", "printer"],
                 ["stops", "starts", "breaks", "hums", "turns", "glows"], 0.2),
}
PLACES = ["in the barn", "near the river", "at the depot", "on the hill", "in the yard", "by the gate"]
TIMES = ["today", "at night", "every morning", "after lunch", "in winter", "on monday"]


def record(rng: random.Random, idx: int) -> dict:
    nouns, verbs, p_entail = TOPICS[rng.choice(sorted(TOPICS))]
    a, b = rng.sample(nouns, 2)
    verb, place, time = rng.choice(verbs), rng.choice(PLACES), rng.choice(TIMES)
    premise = f"The {a} {verb} {place} {time} while the {b} watches."
    if rng.random() < p_entail:
        hypothesis, label = rng.choice([f"The {a} {verb}.", f"The {b} watches.", f"The {a} {verb} {place}."]), \
            "entailment"
    else:
        other = rng.choice([n for n in nouns if n not in (a, b)])
        hypothesis, label = rng.choice([f"The {other} {verb}.", f"The {a} {rng.choice([v for v in verbs if v != verb])}.",
                                        f"The {other} watches."]), "not_entailment"
    return {"premise": premise, "hypothesis": hypothesis, "label": label, "idx": idx}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[2] / "trainer/assets/data"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train", type=int, default=800)
    parser.add_argument("--val", type=int, default=128)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    folder = Path(args.out) / "RTE"
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", args.train), ("val", args.val)):
        with open(folder / f"{split}.jsonl", "w") as f:
            for i in range(n):
                f.write(json.dumps(record(rng, i)) + "\n")
    print(f"wrote {args.train} train and {args.val} val records to {folder}")


if __name__ == "__main__":
    main()
