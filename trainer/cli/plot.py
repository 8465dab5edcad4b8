"""Draw the pictures of a run (finished or interrupted) from its metrics.jsonl.

    smop-plot RUN_DIR [RUN_DIR ...]

Writes RUN_DIR/plots/{loss_lr,routing,routing_tables,eval}.png (those with data; see trainer/monitor/plots.py)
and prints each path. Bad input (no metrics.jsonl, a line that is not JSON): one line on stderr naming
the file and line, exit code 2.
"""
import argparse
import sys
from pathlib import Path

from trainer.monitor.plots import write_plots


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="a training run's output_dir")
    args = parser.parse_args(argv)
    for run_dir in args.run_dirs:
        metrics = Path(run_dir) / "metrics.jsonl"
        if not metrics.is_file():
            print(f"error: {metrics}: no such file (is {run_dir} a run's output_dir?)", file=sys.stderr)
            return 2
        try:
            paths = write_plots(run_dir)
        except ValueError as e:
            print(f"error: {e}".splitlines()[0], file=sys.stderr)
            return 2
        for path in paths:
            print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
