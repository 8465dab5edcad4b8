"""Measure the bytes each rank sends and receives per training step, beside trainer/perf/traffic.py's model.

    python -m tools.bench.comm_volume                          # 1, 2 and 4 CPU ranks, ZeRO-3 and replicated
    python -m tools.bench.comm_volume --ranks 2 --placements zero3 --json out.json

Each (placement, ranks) cell runs the trainer's own `read_inputs -> distributed.init -> build_run ->
train_step` under torchrun (gloo), with every torch.distributed collective wrapped by a counter: the
trainer's (which go through trainer/runtime/distributed.py) and DeepSpeed's (deepspeed.comm calls torch.distributed,
apart from the all-gather function it captured at start-up, which is wrapped too). A rank's bytes are those
of the standard ring algorithms NCCL uses, from the real tensor sizes of every call:
all-gather of an N-byte result: (W-1)/W*N sent and received; all-reduce of N bytes: 2(W-1)/W*N each way;
reduce-scatter of an N-byte input: (W-1)/W*N; broadcast: N received by every rank but the source.
The first `--warmup` steps (ZeRO-3 records its module trace in the first) are not counted.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path


RESULT = "COMM_RESULT "
REPO = Path(__file__).resolve().parents[2]
# The tests' small shape by default: traffic scales with parameter counts, not with how much compute they cost.
SHAPE = ["model.tiny.d_model=64", "model.tiny.d_ff=128", "model.tiny.d_kv=16", "model.tiny.num_heads=4",
         "model.tiny.num_layers=2"]
CONFIGS = {"zero3": "ds_configs/cpu_zero3.json", "replicated": "ds_configs/cpu_zero2.json"}


class CommCounter:
    """Wraps the torch.distributed collectives; `totals()` gives per-op calls and sent/received bytes."""

    OPS = ("all_reduce", "all_gather", "all_gather_into_tensor", "_all_gather_base", "reduce_scatter_tensor",
           "_reduce_scatter_base", "broadcast", "reduce_scatter", "all_reduce_coalesced")

    def __init__(self):
        self.ops: dict[str, dict] = {}
        self.depth = 0  # a collective made inside a counted one is not counted again
        self.saved: list = []

    def install(self) -> None:
        import torch.distributed as dist
        from torch.distributed import distributed_c10d as c10d

        for namespace in (dist, c10d):
            for name in self.OPS:
                if hasattr(namespace, name):
                    original = getattr(namespace, name)
                    self.saved.append((namespace, name, original))
                    setattr(namespace, name, self._wrap(name, original))
        import deepspeed.comm.comm as dscomm

        backend = dscomm.cdb  # captured torch.distributed.all_gather_into_tensor / reduce_scatter_tensor
        for attr, name in (("all_gather_function", "all_gather_into_tensor"),
                           ("reduce_scatter_function", "reduce_scatter_tensor")):
            original = getattr(backend, attr, None)
            if original is not None:
                self.saved.append((backend, attr, original))
                setattr(backend, attr, self._wrap(name, original))

    def uninstall(self) -> None:
        for owner, name, original in reversed(self.saved):
            setattr(owner, name, original)
        self.saved.clear()

    def reset(self) -> None:
        self.ops.clear()

    def _wrap(self, name, original):
        def counted(*args, **kwargs):
            if self.depth == 0:
                self._count(name, args, kwargs)
            self.depth += 1
            try:
                return original(*args, **kwargs)
            finally:
                self.depth -= 1
        return counted

    def _count(self, name: str, args, kwargs) -> None:
        import torch.distributed as dist

        group = kwargs.get("group")
        world = dist.get_world_size(group)
        if world == 1:
            return

        def arg(i, key):
            return kwargs[key] if key in kwargs else args[i]

        share = (world - 1) / world
        if name == "all_reduce":
            payload = arg(0, "tensor").nbytes
            sent = received = 2 * share * payload
        elif name == "all_reduce_coalesced":
            payload = sum(t.nbytes for t in arg(0, "tensors"))
            sent = received = 2 * share * payload
        elif name in ("all_gather_into_tensor", "_all_gather_base"):
            payload = arg(0, "output_tensor").nbytes
            sent = received = share * payload
        elif name == "all_gather":
            payload = sum(t.nbytes for t in arg(0, "tensor_list"))
            sent = received = share * payload
        elif name in ("reduce_scatter_tensor", "_reduce_scatter_base"):
            payload = arg(1, "input").nbytes if "input" in kwargs or len(args) > 1 else kwargs["input_tensor"].nbytes
            sent = received = share * payload
        elif name == "reduce_scatter":
            payload = sum(t.nbytes for t in arg(1, "input_list"))
            sent = received = share * payload
        else:  # broadcast
            payload = arg(0, "tensor").nbytes
            is_src = dist.get_rank() == arg(1, "src")
            sent, received = (payload, 0) if is_src else (0, payload)
        op = self.ops.setdefault(f"{name}/{world} ranks", {"calls": 0, "payload": 0, "sent": 0.0, "received": 0.0})
        op["calls"] += 1
        op["payload"] += payload
        op["sent"] += sent
        op["received"] += received

    def totals(self) -> dict:
        return {"sent": sum(o["sent"] for o in self.ops.values()),
                "received": sum(o["received"] for o in self.ops.values()), "ops": dict(self.ops)}


def worker(spec: dict) -> None:
    """One cell, in each process torchrun started."""
    from trainer.runtime import distributed
    from trainer.runtime.ds_config import param_dtype
    from trainer.loop import reset_stats, train_step
    from trainer.main import build_run, read_inputs
    from trainer.perf.flops import T5Shape
    from trainer.perf.traffic import ZeroSettings, backbone_numels, step_volume

    overrides = [*SHAPE, f"ds_config={spec['ds_config']}", f"output_dir={spec['out_dir']}", "overwrite=true",
                 "train.max_steps=1000", "train.eval_every=0", "train.log_every=1000",
                 f"train.micro_batch_size={spec['micro_batch']}", f"train.grad_accum_steps={spec['accum']}",
                 *spec.get("overrides", [])]
    inputs = read_inputs(None, overrides)
    dist = distributed.init()
    counter = CommCounter()
    counter.install()  # before build_run: its broadcasts are counted too, as setup traffic
    run = build_run(inputs, dist)
    setup = counter.totals()
    reset_stats(run)
    for _ in range(spec["warmup"]):
        train_step(run)
        run.state.step += 1
    counter.reset()
    for _ in range(spec["steps"]):
        train_step(run)
        run.state.step += 1
    measured = counter.totals()
    counter.uninstall()
    per_rank = distributed.all_gather_objects(measured)
    if dist.is_main:
        backbone = run.model.backbone
        shape, tied = T5Shape.from_config(backbone.config), backbone.config.tie_word_embeddings
        trainable = sum(p.numel() for p in run.state.trainable)
        model = step_volume(shape, tied, param_dtype(run.ds_config).itemsize, trainable, dist.world_size,
                            run.state.layout.accum, spec["placement"], ZeroSettings.from_ds_config(run.ds_config))
        total = sum(distributed.numel(p) for p in backbone.parameters())
        assert total == sum(backbone_numels(shape, tied).values()), "the model's weight list is the backbone's"
        steps = spec["steps"]
        print(RESULT + json.dumps({
            "placement": spec["placement"], "ranks": dist.world_size, "accum": run.state.layout.accum,
            "backbone_params": total, "trainable_params": trainable,
            "measured_sent": max(r["sent"] for r in per_rank) / steps,
            "measured_received": max(r["received"] for r in per_rank) / steps,
            "ops": {k: {"calls": v["calls"] / steps, "payload": v["payload"] / steps}
                    for k, v in per_rank[0]["ops"].items()},
            "setup_received": setup["received"], "model": model}), flush=True)
    run.monitor.close()
    distributed.barrier()
    distributed.destroy()
    distributed.exit_without_teardown(0)


def measure(placement: str, ranks: int, out: Path, steps: int = 2, warmup: int = 2, micro_batch: int = 4,
            accum: int = 1, timeout: int = 600, overrides: list[str] | None = None, ds_config: str = "") -> dict:
    """Run one cell and return its result (raises with the log when it fails)."""
    from trainer.runtime.distributed import free_port

    spec = {"placement": placement, "ds_config": ds_config or CONFIGS[placement], "out_dir": str(out / f"{placement}-{ranks}"),
            "steps": steps, "warmup": warmup, "micro_batch": micro_batch, "accum": accum,
            "overrides": overrides or []}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks), "--master_port",
           str(free_port()), "-m", "tools.bench.comm_volume", "--worker", json.dumps(spec)]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT)]
    if proc.returncode or not lines:
        raise RuntimeError(f"{placement} on {ranks} ranks exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len(RESULT):])


def table(results: list[dict]) -> str:
    rows = ["| placement | ranks | backbone params | measured sent / rank / step | measured received | model | "
            "model / measured |", "|---|---|---|---|---|---|---|"]
    for r in results:
        model, got = r["model"], r["measured_received"]
        ratio = f"{model / got:.3f}" if got else ("exact" if model == 0 else "-")
        rows.append(f"| {r['placement']} | {r['ranks']} | {r['backbone_params']:,} | {r['measured_sent']:,.0f} | "
                    f"{got:,.0f} | {model:,.0f} | {ratio} |")
    return "\n".join(rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ranks", default="1,2,4")
    p.add_argument("--placements", default="zero3,replicated")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--accum", type=int, default=1, help="micro batches per step")
    p.add_argument("--out", default="runs/comm_volume")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--ds-config", default="", help="instead of the placement's CPU config (same ZeRO stage)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(json.loads(args.worker))
        return 0
    results = [measure(placement, int(n), Path(args.out), steps=args.steps, accum=args.accum,
                       ds_config=args.ds_config)
               for placement in args.placements.split(",") for n in args.ranks.split(",")]
    print(table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
