"""What rank 0 prints: the run's setup before step 0, and the result of an evaluation."""
from __future__ import annotations

import json
from pathlib import Path

from trainer.runtime import distributed

def describe(run) -> None:
    method, cfg = run.model.method, run.cfg
    trainable = sum(distributed.numel(p) for p in (run.model.backbone if run.update.trains_backbone else method).parameters())
    frozen = sum(distributed.numel(p) for p in run.model.backbone.parameters())
    stage = json.loads((Path(cfg.output_dir) / "ds_config.json").read_text()).get("zero_optimization", {})
    print(f"world {run.dist.world_size} | batch {run.micro_batch} x accum {run.accum_steps} x world "
          f"{run.dist.world_size} = {run.order.global_batch} | ZeRO stage {stage.get('stage', 0)}")
    print(f"backbone {cfg.model.name_or_path}: {frozen:,} params | {cfg.prompt.method}: "
          f"{method.num_prompts} x {method.prompt_length} prompts, routing {cfg.prompt.routing.value}, "
          f"{trainable:,} trainable params")
    run.monitor.log({"event": "setup", "step": run.step, "method": cfg.prompt.method,
                     "trainable_params": trainable, "prompt_positions": method.prompt_length})
    truncated = run.train_data.truncated + run.eval_data.truncated
    test = f", {len(run.test_data.examples)} test" if run.test_data is not None else ""
    print(f"data {cfg.data.task} ({cfg.data.splits.value} splits): {len(run.train_data.examples)} train, "
          f"{len(run.eval_data.examples)} {run.eval_split}{test}"
          + (f", {truncated} inputs truncated to max_source_length" if truncated else "")
          + (f", mixing rates {[round(r, 3) for r in run.order.rates]}" if hasattr(run.order, "rates") else ""))

def print_result(event: dict) -> None:
    metrics = {k: v for k, v in event.items() if "/" in k or k == "average"}
    fractions = ", ".join(f"{f:.2f}" for f in event["routing_fraction"])
    print(f"{event['event']} at step {event['step']}: " + ", ".join(f"{k} {v:.2f}" for k, v in metrics.items())
          + f" ({event['split']} split)")
    print(f"routing: fractions [{fractions}], normalised entropy {event['routing_entropy']:.3f}, "
          f"cv {event['routing_cv']:.3f}")
    table = event.get("routing_table")
    if table and len(event["routing_fraction"]) > 1:  # mixtures: where each task's examples went
        width = max(len(name) for name in [*table, "task"])
        prompts = range(len(event["routing_fraction"]))
        print(f"routing table (share of each task's {event['split']} examples per prompt):")
        print(f"  {'task':<{width}}" + "".join(f"  prompt {j}" for j in prompts))
        for name, shares in table.items():
            print(f"  {name:<{width}}" + "".join(f"  {s:8.2f}" for s in shares))
