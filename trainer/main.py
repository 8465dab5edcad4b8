"""Entry point: `deepspeed --num_gpus N trainer/main.py [--config PRESET.yaml] [key=value ...]`.

Also runs as `deepspeed --module trainer`, `torchrun -m trainer`, under mpirun or srun, or as a plain
`python -m trainer` / `smop-train` (one rank). With no arguments it trains SMoP on the embedded default:
the small T5 and the synthetic tasks shipped in trainer/assets.

This module only composes: read and check the inputs, join the process group, build the run, train, save.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from trainer.config import RunConfig, load_config, shipped_path
from trainer.data.batch import encode, task_names
from trainer.data.mixture import build_order
from trainer.data.splits import RunSplits, load_splits
from trainer.data.tokenizer import build_tokenizer
from trainer.evaluation import evaluate
from trainer.inference.adapter import adapter_meta, save_adapter
from trainer.loop import Run, train_guarded
from trainer.methods.prompted import PromptedT5
from trainer.methods.registry import InitContext, build_method, get_method
from trainer.monitor.monitor import CollapseDetector, Monitor
from trainer.monitor.provenance import write_run_files
from trainer.monitor.report import describe, print_result
from trainer.optim import build_optimizer, build_scheduler
from trainer.runtime import checkpoint, distributed, resume
from trainer.runtime.backbone import build_backbone
from trainer.runtime.compile import compile_blocks
from trainer.runtime.ds_config import load_ds_config, merge_batch, param_dtype, resolve_batch
from trainer.runtime.guard import EXIT_BAD_INPUT, StepGuard
from trainer.runtime.placement_plan import startup_notice
from trainer.runtime.update import EngineUpdate, ReplicatedUpdate


@dataclass
class Inputs:
    """What is read and checked before any process group exists, so bad input fails fast on every rank."""

    cfg: RunConfig
    ds_config: dict
    splits: RunSplits
    tokenizer: object


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        inputs = read_inputs(args.config, args.overrides)
        dist = distributed.init(inputs.cfg.collective_timeout_s / 60)
        found = resume.plan(inputs.cfg, dist)
        run = build_run(inputs, dist)
        checkpoint.restore(run, found)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        distributed.destroy()  # a no-op before init; after it, a clean exit for gloo's threads
        return EXIT_BAD_INPUT
    if dist.is_main:
        write_run_files(run.cfg, inputs.ds_config, dist, run.model.backbone, run.tokenizer)
        describe(run)
        if notice := startup_notice(run, inputs.ds_config):  # a faster placement of the backbone fits
            print(notice)
    run.update.log_backbone_norm(run.monitor, run.step)
    code, result = train_guarded(run)
    if code is not None:
        return code
    run.update.log_backbone_norm(run.monitor, run.step)
    if run.update.trains_backbone:
        distributed.save_backbone(run.update.engine, run.cfg.output_dir)
    if run.test_data is not None:  # data.splits=paper: the held-out test set, once, with the final parameters
        result = evaluate(run, test=True)
    if dist.is_main:
        save_method(run)
        print_result(result)
    run.monitor.close(plots=run.cfg.monitor.plots)
    distributed.barrier()
    distributed.destroy()
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML run preset (configs/*.yaml); default: the embedded tiny run")
    parser.add_argument("--local_rank", type=int, help=argparse.SUPPRESS)  # passed by the deepspeed launcher
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.max_steps=200")
    return parser.parse_args(argv)


def read_inputs(preset: str | None, overrides: list[str]) -> Inputs:
    cfg = load_config(preset, overrides)
    ds_config = load_ds_config(shipped_path(cfg.ds_config))
    splits = load_splits(cfg.data)
    tokenizer = build_tokenizer(cfg.model, cfg.data, splits.train.examples)
    resume.check_output_dir(cfg)  # last: bad data or config fails before anything is created in output_dir
    return Inputs(cfg, ds_config, splits, tokenizer)


def build_run(inputs: Inputs, dist: distributed.Dist) -> Run:
    """Batch sizes, ds_config, the backbone and the method (sharded, initialised), the update path, the data."""
    cfg, tokenizer, t, p = inputs.cfg, inputs.tokenizer, inputs.cfg.train, inputs.cfg.prompt
    micro, accum, global_batch = resolve_batch(t, dist.world_size)
    ds_config = inputs.ds_config = merge_batch(inputs.ds_config, micro, accum, global_batch, cfg.ds_config)
    torch.manual_seed(cfg.seed)
    backbone = build_backbone(cfg.model, len(tokenizer), ds_config, param_dtype(ds_config))
    if t.activation_checkpointing:
        # Non-reentrant: the backbone is frozen, and only the activations (the prompts' path) need gradients.
        backbone.activation_checkpointing_enable({"use_reentrant": False})
    if t.compile:
        compile_blocks(backbone, distributed.is_zero3(ds_config))
    spec, method = get_method(p.method), build_method(p, backbone.config)
    if spec.attach is not None:
        spec.attach(method, backbone)  # before DeepSpeed installs its own hooks
    train_data, eval_data, test_data = (
        encode(s.examples, s.task_ids, tokenizer, cfg.data.max_source_length, method.prompt_length,
               cfg.data.max_target_length) if s is not None else None
        for s in (inputs.splits.train, inputs.splits.eval, inputs.splits.test))
    guard = StepGuard(t.max_nonfinite, cfg.checkpoint.stop_at)
    if spec.trains_backbone:
        # The engine is the backbone here: its forward registers the hooks that make engine.backward
        # accumulate gradients correctly over micro batches.
        backbone = distributed.shard_trainable_backbone(backbone, ds_config, t.lr, t.weight_decay, t.max_grad_norm,
                                                        lambda optimizer: build_scheduler(optimizer, t))
        update = EngineUpdate(backbone)
    else:
        backbone = distributed.shard_backbone(backbone, ds_config)
        method.to(dist.device)
        distributed.broadcast_params(list(method.parameters()))
        if spec.initialise is not None:  # from the data, the same on every rank; resume then loads the same values
            spec.initialise(method, p, InitContext(backbone.get_input_embeddings(), tokenizer, train_data,
                                                   dist.device, cfg.seed))
        router = getattr(method, "router", None)
        params = [q for q in method.parameters() if q.requires_grad]
        optimizer = build_optimizer(params, t, list(router.parameters()) if router is not None else [])
        update = ReplicatedUpdate(params, optimizer, build_scheduler(optimizer, t), guard, t.max_grad_norm)
    router, m = getattr(method, "router", None), cfg.monitor
    watched = router is not None and router.proj is not None and m.collapse_entropy > 0
    names = task_names(cfg.data)
    return Run(cfg=cfg, dist=dist, model=PromptedT5(backbone, method), update=update, guard=guard,
               train_data=train_data, eval_data=eval_data, test_data=test_data, eval_split=inputs.splits.eval.name,
               order=build_order(cfg.data, train_data, len(names), global_batch, cfg.seed),
               micro_batch=micro, accum_steps=accum, tokenizer=tokenizer, task_names=names,
               monitor=Monitor(cfg.output_dir, dist.is_main),
               collapse=CollapseDetector(m.collapse_entropy, m.collapse_patience) if watched else None)


def save_method(run: Run) -> None:
    """The method's final state beside the run (smop_final.safetensors), and adapter/ where it exports one."""
    out, method = Path(run.cfg.output_dir), run.model.method
    save_file({name: t.detach().cpu().contiguous() for name, t in method.state_dict().items()},
              str(out / "smop_final.safetensors"))
    if get_method(run.cfg.prompt.method).exports_adapter:
        save_adapter(out / "adapter", method, adapter_meta(run.cfg, run.model.config), run.tokenizer)


def cli() -> None:
    """`smop-train`, `python -m trainer` and `python trainer/main.py`."""
    distributed.exit_without_teardown(main())  # everything is written and the process group destroyed


if __name__ == "__main__":
    cli()
