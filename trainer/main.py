"""Entry point: `deepspeed --num_gpus N trainer/main.py [--config PRESET.yaml] [key=value ...]`.

Also runs as `deepspeed --module trainer`, `torchrun -m trainer`, under mpirun or srun, or as a plain
`python -m trainer` / `smop-train` (one rank). With no arguments it trains SMoP on the embedded default:
the small T5 and the synthetic tasks shipped in trainer/assets.

This module only composes: read and check the inputs, join the process group, build the run from builders
that return what they build and change nothing they are given, train, save.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch
from safetensors.torch import save as save_safetensors
from torch import nn

from trainer.config import RunConfig, load_config
from trainer.data.batch import Encoded, encode_splits, task_names
from trainer.data.mixture import build_order
from trainer.data.splits import RunSplits, load_splits
from trainer.data.tokenizer import build_tokenizer
from trainer.evaluation import evaluate
from trainer.inference.adapter import adapter_meta, save_adapter
from trainer.loop import Run, train_guarded
from trainer.methods.registry import InitContext, MethodSpec, build_method, get_method
from trainer.models.family import Family, family_of, implementation
from trainer.models.prompted import PromptedModel
from trainer.monitor.monitor import CollapseDetector, Monitor, StragglerDetector
from trainer.monitor.provenance import write_run_files
from trainer.monitor.report import describe, print_result
from trainer.optim import build_optimizer, build_scheduler
from trainer.paths import FINAL_METHOD_FILE, shipped_path
from trainer.perf.flops import ANALYTIC_METHODS
from trainer.perf.plan import Workload, startup_notice
from trainer.perf.shapes import T5Shape
from trainer.models.build import backbone_config, check_fit, resolve_family
from trainer.runtime import checkpoint, distributed, resume, storage
from trainer.runtime.backbone import build_backbone
from trainer.runtime.compile import compile_blocks
from trainer.runtime.ds_config import load_ds_config, merge_batch, param_dtype, resolve_batch
from trainer.runtime.guard import EXIT_BAD_INPUT, EXIT_STORAGE, StepGuard
from trainer.runtime.hardware import hardware
from trainer.runtime.steptime import StepClock
from trainer.runtime.storage import StorageError
from trainer.runtime.update import EngineUpdate, ReplicatedUpdate
from trainer.runtime.watchdog import Watchdog, resolve_timeout
from trainer.state import TrainState

@dataclass
class Inputs:
    """What is read and checked before any process group exists, so bad input fails fast on every rank."""

    cfg: RunConfig
    ds_config: dict
    """As read from cfg.ds_config; the run's batch keys are merged into a copy (`build_run`)."""
    splits: RunSplits
    tokenizer: object
    backbone_config: object
    """The backbone's Hugging Face config, read without its weights."""
    family: Family
    """seq2seq or causal (trainer/models/family.py), resolved from the config."""


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        inputs = read_inputs(args.config, args.overrides)
        dist = distributed.init(inputs.cfg.collective_timeout_s / 60)
        found = resume.plan(inputs.cfg, dist)
        run = build_run(inputs, dist)
        if found is not None:
            checkpoint.restore(run.state, found, dist, run.cfg.seed)
            run.monitor.resumed(run.state.step, found.path, dist.world_size, found.meta["world_size"])
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        distributed.destroy()  # a no-op before init; after it, a clean exit for gloo's threads
        return EXIT_BAD_INPUT
    try:
        return train_and_save(run)
    except StorageError as e:  # raised on every rank at the same point (trainer/runtime/storage.py)
        if dist.is_main:
            print(f"\nerror: {e}", file=sys.stderr)  # \n: a save during training leaves the progress bar's line open
        run.monitor.close()  # no pictures: the disk that refused the save would refuse them too
        distributed.destroy()
        return EXIT_STORAGE


def train_and_save(run: Run) -> int:
    """Write the run files, train, evaluate the test set if any, write the final state; the exit code."""
    dist, out = run.dist, Path(run.cfg.output_dir)
    storage.written_by_main(dist, "the run files (config.yaml, run_info.json, tokenizer/)", out,
                            lambda: "the run stopped before its first step",
                            lambda: write_run_files(run.cfg, run.ds_config, dist, run.model.backbone, run.tokenizer))
    if dist.is_main:
        report_setup(run)
        if notice := placement_notice(run):  # a faster placement of the backbone fits
            print(notice)
    run.update.log_backbone_norm(run.monitor, run.state.step)
    code, result = train_guarded(run)
    if code is not None:
        return code
    run.update.log_backbone_norm(run.monitor, run.state.step)
    if run.update.trains_backbone:
        distributed.save_backbone(run.update.engine, run.cfg.output_dir)
    if run.data.test is not None:  # data.splits=paper: the held-out test set, once, with the final parameters
        result = evaluate(run, test=True)
    storage.written_by_main(dist, f"the final state ({FINAL_METHOD_FILE}, adapter/)", out,
                            lambda: f"training finished and checkpoint step-{run.state.step:06d} holds the trained state",
                            lambda: save_method(run))
    if dist.is_main:
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
    config = backbone_config(cfg.model, len(tokenizer))
    family = resolve_family(cfg.model, config)
    check_fit(cfg, config, family, tokenizer, get_method(cfg.prompt.method).prompt_length(cfg.prompt))
    resume.check_output_dir(cfg)  # last: bad data or config fails before anything is created in output_dir
    return Inputs(cfg, ds_config, splits, tokenizer, config, family)


# --- builders: each returns what it builds and changes nothing it is given -------------------------------

def build_run(inputs: Inputs, dist: distributed.Dist) -> Run:
    """The batch layout and ds_config, the backbone and the method (sharded, initialised), the update path,
    the data and the training state."""
    cfg, tokenizer = inputs.cfg, inputs.tokenizer
    layout = resolve_batch(cfg.train, dist.world_size)
    ds_config = merge_batch(inputs.ds_config, layout, cfg.ds_config)
    family = implementation(inputs.family)
    spec, backbone, method = build_model(cfg, inputs.backbone_config, family, ds_config)
    # A causal LM's input starts with its tokenizer's BOS, when it has one (docs/method.md §10).
    data = encode_splits(inputs.splits, tokenizer, cfg.data, method.prompt_length, bos=inputs.family == Family.CAUSAL)
    guard = StepGuard(cfg.train.max_nonfinite, cfg.checkpoint.stop_at)
    backbone, update = build_update(cfg, spec, backbone, method, ds_config, dist, guard, tokenizer, data.train)
    names = task_names(cfg.data)
    state = TrainState(method, update.optimizer, update.scheduler, guard,
                       build_order(cfg.data, data.train, len(names), layout.global_batch, cfg.seed), layout)
    timeout, grace = resolve_timeout(cfg.hang_timeout_s, cfg.collective_timeout_s)
    return Run(cfg=cfg, dist=dist, ds_config=ds_config, model=PromptedModel(backbone, method, family), update=update,
               state=state, data=data, tokenizer=tokenizer, task_names=names,
               monitor=Monitor(cfg.output_dir, dist.is_main), clock=StepClock(dist.device),
               watchdog=Watchdog(cfg.output_dir, dist.rank, dist.hosts, dist.pids, timeout, grace),
               collapse=build_collapse_detector(cfg, method), stragglers=build_straggler_detector(cfg, dist))


def build_model(cfg: RunConfig, config, family: ModuleType, ds_config: dict) -> tuple[MethodSpec, nn.Module, nn.Module]:
    """The method's spec, the frozen backbone of `config` (built into ZeRO-3 partitions when the ds_config
    says so) and the method's module, attached to the backbone where the method hooks into it (through the
    `family` module's structure); nothing is sharded yet."""
    t = cfg.train
    torch.manual_seed(cfg.seed)
    backbone = build_backbone(cfg.model, config, ds_config, param_dtype(ds_config))
    if t.activation_checkpointing:
        # Non-reentrant: the backbone is frozen, and only the activations (the prompts' path) need gradients.
        backbone.activation_checkpointing_enable({"use_reentrant": False})
    if t.compile:
        compile_blocks(backbone, family.blocks(backbone), distributed.is_zero3(ds_config))
    spec, method = get_method(cfg.prompt.method), build_method(cfg.prompt, backbone.config)
    if spec.attach is not None:
        spec.attach(method, backbone, family)  # before DeepSpeed installs its own hooks
    return spec, backbone, method


def build_update(cfg: RunConfig, spec: MethodSpec, backbone: nn.Module, method: nn.Module, ds_config: dict,
                 dist: distributed.Dist, guard: StepGuard, tokenizer, train_data: Encoded
                 ) -> tuple[nn.Module, ReplicatedUpdate | EngineUpdate]:
    """Shard the backbone and choose the update path: DeepSpeed's engine when the backbone trains, else the
    method's replicated fp32 parameters (broadcast from rank 0, then initialised from the training data by
    the method's `initialise`) with their own optimiser. Returns the backbone module to call and the update."""
    t = cfg.train
    if spec.trains_backbone:
        # The engine is the backbone here: its forward registers the hooks that make engine.backward
        # accumulate gradients correctly over micro batches.
        engine = distributed.shard_trainable_backbone(backbone, ds_config, t.lr, t.weight_decay, t.max_grad_norm,
                                                      lambda optimizer: build_scheduler(optimizer, t))
        return engine, EngineUpdate(engine)
    backbone = distributed.shard_backbone(backbone, ds_config)
    method.to(dist.device)
    distributed.broadcast_params(list(method.parameters()))
    if spec.initialise is not None:  # from the data, the same on every rank; resume then loads the same values
        spec.initialise(method, cfg.prompt, InitContext(backbone.get_input_embeddings(), tokenizer, train_data,
                                                        dist.device, cfg.seed))
    router = getattr(method, "router", None)
    params = [q for q in method.parameters() if q.requires_grad]
    optimizer = build_optimizer(params, t, list(router.parameters()) if router is not None else [])
    return backbone, ReplicatedUpdate(params, optimizer, build_scheduler(optimizer, t), guard, t.max_grad_norm)


def build_collapse_detector(cfg: RunConfig, method: nn.Module) -> CollapseDetector | None:
    """A detector for methods with a trained router, unless monitor.collapse_entropy is 0."""
    router, m = getattr(method, "router", None), cfg.monitor
    watched = router is not None and router.proj is not None and m.collapse_entropy > 0
    return CollapseDetector(m.collapse_entropy, m.collapse_patience) if watched else None


def build_straggler_detector(cfg: RunConfig, dist: distributed.Dist) -> StragglerDetector | None:
    """A detector for runs of several ranks, unless monitor.straggler_factor is 0."""
    m = cfg.monitor
    if dist.world_size < 2 or not m.straggler_factor:
        return None
    return StragglerDetector(m.straggler_factor, m.straggler_patience, dist.world_size)


# --- what rank 0 reports and writes ---------------------------------------------------------------------

def report_setup(run: Run) -> None:
    """The setup lines and the `setup` event."""
    method, backbone = run.model.method, run.model.backbone
    trainable = sum(distributed.numel(p) for p in (backbone if run.update.trains_backbone else method).parameters())
    frozen = sum(distributed.numel(p) for p in backbone.parameters())
    run.monitor.log(describe(run.cfg, run.state.layout, run.ds_config, method, frozen, trainable, run.data,
                             run.state.step, getattr(run.state.order, "rates", None)))


def placement_notice(run: Run) -> str | None:
    """The start-up placement line (trainer/perf/plan.py) for this run's workload on this job's hardware;
    None for full fine-tuning (a trained backbone's gradients and optimiser state are not modelled) and for
    methods without an analytic cost, and for causal LMs (the traffic model is T5's)."""
    cfg, method, layout = run.cfg, run.model.method, run.state.layout
    if (run.update.trains_backbone or cfg.prompt.method not in ANALYTIC_METHODS
            or family_of(run.model.config) == Family.CAUSAL):
        return None
    backbone = run.model.backbone
    workload = Workload(T5Shape.from_config(backbone.config), bool(backbone.config.tie_word_embeddings),
                        next(backbone.parameters()).element_size(), sum(p.numel() for p in run.state.trainable),
                        cfg.data.max_source_length - method.prompt_length, cfg.data.max_target_length,
                        method.prompt_length, layout.micro, layout.accum, cfg.prompt.method, method.num_prompts)
    return startup_notice(workload, hardware(run.dist.device, run.dist.world_size, cfg.interconnect_gbps),
                          run.ds_config)


def save_method(run: Run) -> None:
    """The method's final state beside the run (method_final.safetensors), and adapter/ for a prompt bank."""
    out, method = Path(run.cfg.output_dir), run.model.method
    # Serialised in memory and written by Python: a full disk is an OSError (trainer/runtime/storage.py).
    (out / FINAL_METHOD_FILE).write_bytes(save_safetensors(
        {name: t.detach().cpu().contiguous() for name, t in method.state_dict().items()}))
    if get_method(run.cfg.prompt.method).prompt_bank:
        save_adapter(out / "adapter", method, adapter_meta(run.cfg, run.model.config), run.tokenizer)


def cli() -> None:
    """`smop-train`, `python -m trainer` and `python trainer/main.py`."""
    distributed.exit_without_teardown(main())  # everything is written and the process group destroyed


if __name__ == "__main__":
    cli()
