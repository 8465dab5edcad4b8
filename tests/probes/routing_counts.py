"""Run a few real training steps and write each rank's own routing counts beside the logged ones.

    torchrun --nproc_per_node 2 -m tests.probes.routing_counts OUT_DIR [overrides...]
"""
import json
import sys
from pathlib import Path

from tqdm import tqdm

from tests.launch import TINY
from trainer.runtime import distributed
from trainer.loop import maybe_log, reset_stats, train_step
from trainer.main import build_run, read_inputs

out = Path(sys.argv[1])
inputs = read_inputs(None, TINY + [f"output_dir={out}", "train.log_every=3", *sys.argv[2:]])
dist = distributed.init()
run = build_run(inputs, dist)
reset_stats(run)
for _ in range(3):
    train_step(run)
    run.state.step += 1
# This rank's counts over the log window, before the all-reduce: clean (no noise) and as trained (noisy).
mine = {key: run.stats[key].tolist() for key in ("clean_counts", "counts")}
maybe_log(run, tqdm(disable=True), 0.0)
(out / f"counts-rank{dist.rank}.json").write_text(json.dumps(mine))
run.monitor.close()
distributed.destroy()
