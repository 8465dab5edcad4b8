"""Score a predictions file against a SuperGLUE split with the official (or SMoP) metrics.

    smop-evaluate --task rte --data_dir DIR --split val --predictions preds.jsonl

`--split dev` scores the dev set the trainer carves from train.jsonl with data.splits=paper (the last
`--dev_fraction` of each label); with that convention the test set is `--split val`.

`preds.jsonl` holds one {"idx": ..., "prediction": "..."} object per line; MultiRC and ReCoRD use their
nested idx ({"paragraph", "question", "answer"} / {"passage", "query"}). Prints one JSON object of
metrics (0-100). Bad input: one line on stderr naming file:line, exit code 2.
"""
import argparse
import json
import sys

from trainer.data.metrics import VARIANTS, idx_key, score
from trainer.data.readers import SPLITS, load_split, read_jsonl_lines
from trainer.data.splits import paper_splits
from trainer.data.tasks import get_task


def read_predictions(path, examples) -> dict:
    """{idx_key(idx): prediction}; every idx must belong to the split, and appear once."""
    known = {idx_key(ex.idx) for ex in examples}
    predictions = {}
    for lineno, record in read_jsonl_lines(path):
        where = f"{path}:{lineno}"
        for field in ("idx", "prediction"):
            if field not in record:
                raise ValueError(f"{where}: missing field '{field}'")
        if not isinstance(record["prediction"], str):
            raise ValueError(f"{where}: 'prediction' must be a string, got {record['prediction']!r}")
        key = idx_key(record["idx"])
        if key not in known:
            raise ValueError(f"{where}: idx {json.dumps(record['idx'])} is not in the split")
        if key in predictions:
            raise ValueError(f"{where}: duplicate idx {json.dumps(record['idx'])}")
        predictions[key] = record["prediction"]
    return predictions


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", required=True, help="a SuperGLUE task name, or jsonl")
    parser.add_argument("--data_dir", required=True, help="folder holding <TASK>/<split>.jsonl")
    parser.add_argument("--split", default="val", choices=(*SPLITS, "dev"),
                        help="an official split, or dev: the trainer's data.splits=paper dev set")
    parser.add_argument("--dev_fraction", type=float, default=0.1, help="--split dev: the run's data.dev_fraction")
    parser.add_argument("--predictions", required=True, help="jsonl of {idx, prediction}")
    parser.add_argument("--variant", default="official", choices=VARIANTS)
    args = parser.parse_args(argv)
    try:
        task = get_task(args.task)
        # Evaluation layout: one ReCoRD example per query, whatever the split.
        if args.split == "dev":
            examples = paper_splits(task, args.data_dir, args.dev_fraction)["dev"]
        else:
            examples = load_split(task, args.data_dir, args.split, train=False)
        predictions = read_predictions(args.predictions, examples)
        metrics = score(task, examples, predictions, variant=args.variant)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(metrics, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
