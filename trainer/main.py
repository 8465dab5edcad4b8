"""Entry point: `deepspeed --num_gpus N trainer/main.py [--config PRESET.yaml] [key=value ...]`.

Also runs under torchrun, mpirun, srun, or as a plain `python trainer/main.py` (one rank). With no
arguments it trains SMoP on the embedded tiny default: a random T5 and small SuperGLUE-format data.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path


import torch
from safetensors.torch import save_file

from trainer.runtime import distributed
from trainer.runtime import resume
from trainer.inference.adapter import adapter_meta, save_adapter
from trainer.runtime.backbone import build_backbone
from trainer.runtime.compile import compile_blocks
from trainer.config import (Method, PromptInit, RouterInit, RouterInput, RunConfig,
                            load_config, prompt_positions, shipped_path)
from trainer.data.batch import encode, task_names
from trainer.runtime.guard import EXIT_BAD_INPUT, EXIT_COLLAPSE, EXIT_NONFINITE, EXIT_REQUEUE, NonFiniteLoss
from trainer.runtime.ds_config import load_ds_config, merge_batch, param_dtype, resolve_batch
from trainer.evaluation import evaluate
from trainer.loop import Run, train
from trainer.methods.iapt import IAPT
from trainer.data.mixture import build_order
from trainer.methods.prompted import NoPrompt, PromptedT5
from trainer.monitor.monitor import CollapseDetector, Monitor
from trainer.monitor.provenance import write_run_files
from trainer.monitor.report import describe, print_result
from trainer.optim import build_optimizer, build_scheduler
from trainer.runtime.placement_plan import startup_notice
from trainer.methods.ptuning import PromptEncoder
from trainer.methods.router_init import fit_router, router_inputs
from trainer.methods.smop import SMoP, init_prompts
from trainer.data.splits import RunSplits, load_splits
from trainer.data.tokenizer import load_tokenizer, train_tokenizer


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML run preset (configs/*.yaml); default: the embedded tiny run")
    parser.add_argument("--local_rank", type=int, help=argparse.SUPPRESS)  # passed by the deepspeed launcher
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.max_steps=200")
    return parser.parse_args(argv)


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
        resume.restore(run, found)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        distributed.destroy()  # a no-op before init; after it, a clean exit for gloo's threads
        return EXIT_BAD_INPUT
    if dist.is_main:
        write_run_files(run.cfg, inputs.ds_config, dist, run.model.backbone, run.tokenizer)
        describe(run)
        if notice := startup_notice(run, inputs.ds_config):  # a faster placement of the backbone fits
            print(notice)
    log_backbone_norm(run)
    code, result = train_guarded(run)
    if code is not None:
        return code
    log_backbone_norm(run)
    if run.engine is not None:
        distributed.save_backbone(run.engine, run.cfg.output_dir)
    if run.test_data is not None:  # data.splits=paper: the held-out test set, once, with the final parameters
        result = evaluate(run, test=True)
    if dist.is_main:
        save_file({name: t.detach().cpu().contiguous() for name, t in run.model.smop.state_dict().items()},
                  str(Path(run.cfg.output_dir) / "smop_final.safetensors"))
        if run.cfg.prompt.method in (Method.SMOP, Method.PROMPT_TUNING):  # what adapters describe; the
            save_adapter(Path(run.cfg.output_dir) / "adapter", run.model.smop,  # others keep smop_final
                         adapter_meta(run.cfg, run.model.config), run.tokenizer)
        print_result(result)
    run.monitor.close(plots=run.cfg.monitor.plots)
    distributed.barrier()
    distributed.destroy()
    return 0


def train_guarded(run: Run) -> tuple[int | None, dict]:
    """Train with the stop signals caught: (exit code if it stopped early, else None; the last eval)."""
    run.guard.install()
    try:
        result = train(run)
    except NonFiniteLoss as e:
        print(f"\nerror: {e}", file=sys.stderr)  # \n: the progress bar's line is still open
        return _close(run, EXIT_NONFINITE), {}
    finally:
        run.guard.uninstall()
    if run.collapsed:
        print(f"rank {run.dist.rank}: stopped after step {run.step}: routing collapsed (monitor.stop_on_collapse); "
              f"checkpoint saved; exit code {EXIT_COLLAPSE}", file=sys.stderr)
        return _close(run, EXIT_COLLAPSE), result
    if run.step < run.cfg.train.max_steps:
        g = run.guard
        why = (f"signal {g.signalled}" if g.signalled else f"checkpoint.stop_at={g.stop_at}"
               if g.stop_at and run.step >= g.stop_at else "a signal to another rank")
        print(f"rank {run.dist.rank}: stopped after step {run.step} by {why}; checkpoint saved; exit code "
              f"{EXIT_REQUEUE}: run the same command to resume", file=sys.stderr)
        return _close(run, EXIT_REQUEUE), result
    return None, result


def _close(run: Run, code: int) -> int:
    run.monitor.close(plots=run.cfg.monitor.plots)  # pictures of the run so far
    distributed.destroy()
    return code


def read_inputs(preset: str | None, overrides: list[str]) -> Inputs:
    cfg = load_config(preset, overrides)
    ds_config = load_ds_config(shipped_path(cfg.ds_config))
    splits = load_splits(cfg.data)
    tokenizer = build_tokenizer(cfg, splits.train.examples)
    check_output_dir(cfg)  # last: bad data or config fails before anything is created in output_dir
    return Inputs(cfg, ds_config, splits, tokenizer)


def build_run(inputs: Inputs, dist: distributed.Dist) -> Run:
    """Batch sizes, ds_config, tokenised data, the sharded backbone, SMoP and its optimiser."""
    cfg, tokenizer = inputs.cfg, inputs.tokenizer
    micro, accum, global_batch = resolve_batch(cfg.train, dist.world_size)
    ds_config = merge_batch(inputs.ds_config, micro, accum, global_batch, cfg.ds_config)
    inputs.ds_config = ds_config
    torch.manual_seed(cfg.seed)
    p, d, splits = cfg.prompt, cfg.data, inputs.splits
    train_data, eval_data, test_data = (
        encode(s.examples, s.task_ids, tokenizer, d.max_source_length, prompt_positions(p), d.max_target_length)
        if s is not None else None for s in (splits.train, splits.eval, splits.test))
    backbone, smop, optimizer, scheduler, engine = build_method(cfg, ds_config, tokenizer, dist.device, train_data)
    router = getattr(smop, "router", None)
    m = cfg.monitor
    watched = router is not None and router.proj is not None and m.collapse_entropy > 0
    return Run(cfg=cfg, dist=dist, model=PromptedT5(backbone, smop), optimizer=optimizer,
               scheduler=scheduler, train_data=train_data, eval_data=eval_data,
               order=build_order(d, train_data, len(task_names(d)), global_batch, cfg.seed),
               micro_batch=micro, accum_steps=accum, tokenizer=tokenizer,
               monitor=Monitor(cfg.output_dir, dist.is_main), task_names=task_names(d),
               eval_split=splits.eval.name, test_data=test_data, engine=engine,
               collapse=CollapseDetector(m.collapse_entropy, m.collapse_patience) if watched else None)


def build_method(cfg: RunConfig, ds_config: dict, tokenizer, device, train_data):
    """The backbone and prompt.method's trainable part (a router fitted to `train_data` where it has one),
    with its optimiser and schedule (and the engine when the backbone itself trains).
    Returns (backbone, prompt slot, optimizer, scheduler, engine | None)."""
    p, t = cfg.prompt, cfg.train
    model = build_backbone(cfg.model, len(tokenizer), ds_config, param_dtype(ds_config))
    if t.activation_checkpointing:
        # Non-reentrant: the backbone is frozen, and only the activations (the prompts' path) need gradients.
        model.activation_checkpointing_enable({"use_reentrant": False})
    if t.compile:
        compile_blocks(model, distributed.is_zero3(ds_config))
    if p.method == Method.FULL_FINETUNE:
        engine = distributed.shard_trainable_backbone(model, ds_config, t.lr, t.weight_decay, t.max_grad_norm,
                                                      lambda optimizer: build_scheduler(optimizer, t))
        # The engine itself is the backbone here: its forward registers the backward hooks that make
        # engine.backward accumulate gradients correctly over micro batches.
        return engine, NoPrompt(model.config.d_model), engine.optimizer, engine.lr_scheduler, engine
    if p.method == Method.IAPT:
        smop = IAPT(model.config.d_model, model.config.num_layers, p.iapt_bottleneck, p.iapt_prompts)
        smop.attach(model.encoder.block)  # before DeepSpeed installs its own hooks on the blocks
        backbone = distributed.shard_backbone(model, ds_config)
    else:
        backbone = distributed.shard_backbone(model, ds_config)
        smop = build_smop(cfg, backbone, tokenizer)
    smop.to(device)
    distributed.broadcast_params(list(smop.parameters()))
    router = getattr(smop, "router", None)
    kmeans = p.router_init == RouterInit.KMEANS
    if router is not None and router.proj is not None and (router.center is not None or kmeans):
        # Before step 0, from the data, the same on every rank; resume then loads the saved (identical) values.
        x = router_inputs(backbone.get_input_embeddings(), train_data, tokenizer.pad_token_id, device,
                          p.router_center_examples)
        fit_router(router, x, kmeans, cfg.seed)
    optimizer = build_optimizer([q for q in smop.parameters() if q.requires_grad], t,
                                list(router.parameters()) if router is not None else [])
    return backbone, smop, optimizer, build_scheduler(optimizer, t), None


def build_tokenizer(cfg: RunConfig, train_examples):
    name = cfg.model.tokenizer or ("" if cfg.model.name_or_path == "tiny" else cfg.model.name_or_path)
    if name:
        return load_tokenizer(name, cfg.model.trust_remote_code)
    from trainer.data.tasks import get_task

    texts = [ex.input for ex in train_examples] + [ex.target for ex in train_examples]
    words = tuple(w for name in task_names(cfg.data) for w in (get_task(name).label_words or ()))
    return train_tokenizer(texts, whole_words=tuple(dict.fromkeys(words)))


def build_smop(cfg: RunConfig, backbone, tokenizer) -> SMoP:
    """The prompt bank and router, initialised identically on every rank (same seed, same ids)."""
    p = cfg.prompt
    d_model = backbone.config.d_model
    encoder = PromptEncoder(d_model, p.ptuning_hidden, p.ptuning_encoder.value) if p.method == Method.PTUNING else None
    smop = SMoP(d_model, p.num_prompts, p.prompt_length, p.routing.value, p.top_k,
                p.noise_scale, p.gumbel_temperature, p.balance_coef, encoder,
                centered=p.router_input == RouterInput.CENTERED)
    gen = torch.Generator().manual_seed(cfg.seed)
    ids = None
    if p.init == PromptInit.VOCAB:
        top = min(p.init_vocab_top, len(tokenizer))
        ids = torch.randint(3, top, (p.num_prompts, p.prompt_length), generator=gen)  # skip pad, </s>, unk
    elif p.init == PromptInit.TEXT:
        text_ids = tokenizer(p.init_text, add_special_tokens=False).input_ids
        repeated = (text_ids * (p.prompt_length // max(1, len(text_ids)) + 1))[: p.prompt_length]
        ids = torch.tensor(repeated).expand(p.num_prompts, -1)
    init_prompts(smop, p.init.value, backbone.get_input_embeddings(), ids, gen)
    with torch.no_grad():
        smop.prompts.mul_(p.init_scale)
    return smop


def log_backbone_norm(run: Run) -> None:
    """Full fine-tuning: the backbone's weight norm before and after training shows that it trained."""
    if run.engine is not None:
        run.monitor.log({"event": "backbone", "step": run.step,
                         "norm": distributed.norm(run.model.backbone.parameters())})


def check_output_dir(cfg: RunConfig) -> None:
    """Refuse to mix two different runs in one output_dir (checked on every rank: same filesystem)."""
    out = Path(cfg.output_dir)
    resume.check_previous_run(cfg)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise ValueError(f"output_dir '{out}' is not writable ({e.strerror})") from None










if __name__ == "__main__":
    distributed.exit_without_teardown(main())  # everything is written and the process group destroyed
