"""What rank 0 prints: the run's setup before step 0, and the result of an evaluation."""
from __future__ import annotations


def describe(cfg, layout, ds_config: dict, method, frozen: int, trainable: int, data, step: int,
             rates: list[float] | None = None) -> dict:
    """Print the run's setup before its first step (rank 0 calls it); returns the `setup` event to log.

    cfg: the run config; layout: its `BatchLayout`; ds_config: the merged DeepSpeed config; method: the module
    in the prompt slot; frozen / trainable: parameter counts (the backbone's; what trains); data: the
    `EncodedSplits`; step: where the run starts; rates: a temperature mixture's task sampling rates.
    """
    stage = ds_config.get("zero_optimization", {}).get("stage", 0)
    print(f"world {layout.world} | batch {layout.micro} x accum {layout.accum} x world {layout.world} = "
          f"{layout.global_batch} | ZeRO stage {stage}")
    print(f"backbone {cfg.model.name_or_path}: {frozen:,} params | {cfg.prompt.method}: "
          f"{method.num_prompts} x {method.prompt_length} prompts, routing {cfg.prompt.routing.value}, "
          f"{trainable:,} trainable params")
    truncated = data.train.truncated + data.eval.truncated
    test = f", {len(data.test.examples)} test" if data.test is not None else ""
    print(f"data {cfg.data.task} ({cfg.data.splits.value} splits): {len(data.train.examples)} train, "
          f"{len(data.eval.examples)} {data.eval_name}{test}"
          + (f", {truncated} inputs truncated to max_source_length" if truncated else "")
          + (f", mixing rates {[round(r, 3) for r in rates]}" if rates is not None else ""))
    return {"event": "setup", "step": step, "method": cfg.prompt.method, "trainable_params": trainable,
            "prompt_positions": method.prompt_length}


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
