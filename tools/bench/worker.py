"""One benchmark arm of this trainer (or the bare loop over the same model), in the processes torchrun starts.

    torchrun --nproc_per_node 2 -m tools.bench.worker '<spec json>'     (tools/bench/speed.py writes the spec)
    python -m tools.bench.worker --peak                                  (bf16 matmul peak of this GPU)

The model, data order and step are the trainer's own: `read_inputs -> distributed.init -> build_run`, then
`train_step` on synthetic rows (tools/bench/common.py), fixed-length or varied (--lengths varied). Figures, in this order:
1. timed steps: `train_step` exactly as `train()` calls it, one device sync after each step (none inside);
2. a separate instrumented pass that wraps the step's phases (forward, all-reduce) with syncs to split the
   step time: never the pass the throughput comes from;
3. inference latency: greedy generation of a fixed number of tokens through the prompted backbone (T5: the
   prompt before the encoder input; a causal LM: in the prefill, then the KV cache).
The `bare` arm runs the same forward/backward/all-reduce/step over the same engine-sharded backbone and SMoP
module with none of the trainer's machinery (no collate per step, no global token count, no statistics, no
clipping or schedule): the trainer's overhead is the ratio of the two. Either family: a T5 (seq2seq) or a
decoder-only LM (`model.family=causal`, the size's `family`), whose bare forward is the one sequence of
[prompt ; input ; target].
"""
from __future__ import annotations

import json
import sys
import time

import torch
import torch.nn.functional as F

from tools.bench.common import (Size, combine, device_info, emit, matmul_peak_flops, median, model_overrides,
                                peak_memory, rank_figures, reset_peak_memory, sync, synthetic_rows, varied_rows)
from trainer.models import causal


def main(spec: dict) -> None:
    import torch.distributed as tdist

    from trainer.runtime import distributed
    from trainer.data.batch import Encoded, collate
    from trainer.loop import reset_stats, train_step
    from trainer.main import build_run, read_inputs
    from trainer.data.mixture import build_order

    size = Size(**spec["size"])
    inputs = read_inputs(None, trainer_overrides(spec, size))
    dist = distributed.init()
    run = build_run(inputs, dist)
    if spec.get("eager_attention"):
        # transformers runs T5 attention through SDPA by default (exact: tests/runtime/test_backbone.py); eager is the
        # before-figure of that speed item.
        run.model.backbone.set_attn_implementation("eager")
    varied = spec.get("lengths") == "varied"
    n = run.state.order.global_batch * (64 if varied else 8)
    rows = varied_rows if varied else synthetic_rows
    input_ids, labels = rows(n, size.seq_len, size.target_len, size.vocab_size, run.cfg.seed)
    run.data.train = Encoded([None] * n, [0] * n, input_ids, labels, 0)
    run.state.order = build_order(run.cfg.data, run.data.train, 1, run.state.order.global_batch, run.cfg.seed)
    reset_stats(run)
    device = dist.device

    if spec["kind"] == "bare":
        batches = [{k: v.to(device) for k, v in collate(run.data.train, list(range(i, i + run.state.layout.micro)), 0).items()}
                   for i in range(0, 4 * run.state.layout.micro, run.state.layout.micro)]
        step = 0
        run.model.train()  # dropout on, as train_step sets it: both loops do the same arithmetic

        def one_step(marks=None):
            nonlocal step
            bare_step(run, batches[step % len(batches)], tdist, marks)
            step += 1
    else:
        def one_step(marks=None):
            train_step(run)
            run.state.step += 1

    warmup = []  # the first step also compiles under train.compile: its time is the compile's cost
    for _ in range(spec["warmup"]):
        started = time.perf_counter()
        one_step()
        sync(device)
        warmup.append(time.perf_counter() - started)
    reset_peak_memory(device)
    timed_from, times = run.state.step, []
    for _ in range(spec["steps"]):
        started = time.perf_counter()
        one_step()
        sync(device)
        times.append(time.perf_counter() - started)
    mem = peak_memory(device)
    phases = (bare_phases(one_step, device, spec["phase_steps"]) if spec["kind"] == "bare"
              else trainer_phases(run, device, spec["phase_steps"]))
    paired = paired_overhead(one_step, run, device, spec["steps"]) if spec["kind"] == "bare" else None
    paired_compile = compile_ab(run, device, spec["steps"]) if spec.get("compile") else None
    latency, gather_s = None, None
    if spec["kind"] != "bare" and spec["infer_repeats"] > 0:
        from trainer.runtime.eval_gather import maybe_whole_backbone

        batch = collate(run.data.train, list(range(run.state.layout.micro)), 0)
        started = time.perf_counter()
        with maybe_whole_backbone(run.model.backbone, device, 1, bool(spec.get("gathered_eval"))) as gathered:
            gather_s = time.perf_counter() - started if gathered else None
            latency = generation_latency(run, batch, size.gen_tokens, spec["infer_repeats"])
    per_rank = distributed.all_gather_objects({**rank_figures(times, phases, mem, latency), "paired": paired,
                                               "paired_compile": paired_compile})
    if dist.is_main:
        extra = {}
        if paired is not None:
            bare_s = max(median(r["paired"]["bare"]) for r in per_rank)
            trainer_s = max(median(r["paired"]["trainer"]) for r in per_rank)
            extra = {"paired_bare_step_s": bare_s, "paired_trainer_step_s": trainer_s,
                     "trainer_overhead_paired": trainer_s / bare_s - 1}
        if paired_compile is not None:
            eager_s = max(median(r["paired_compile"]["eager"]) for r in per_rank)
            compiled_s = max(median(r["paired_compile"]["compiled"]) for r in per_rank)
            extra = {"paired_eager_step_s": eager_s, "paired_compiled_step_s": compiled_s,
                     "compile_speedup_paired": eager_s / compiled_s}
        backbone = list(run.model.backbone.parameters())
        pad = padding(run, range(timed_from, timed_from + spec["steps"])) if spec["kind"] != "bare" else {}
        tokens_per_example = (pad["input_tokens_per_example"] if varied and pad else size.seq_len) + size.target_len
        emit({"arm": spec["arm"], "status": "ok", "world_size": dist.world_size,
              "global_batch": run.state.order.global_batch, "micro_batch": run.state.layout.micro,
              "backbone_params": sum(distributed.numel(p) for p in backbone),
              "trainable_params": sum(p.numel() for p in run.state.trainable),
              "backbone_dtype": str(backbone[0].dtype).removeprefix("torch."),
              **combine(per_rank, run.state.order.global_batch, tokens_per_example, run.state.layout.micro, mean=varied),
              "warmup_step_s_rank0": warmup, **pad, **extra, "gather_s": gather_s})
    run.monitor.close()
    distributed.barrier()
    distributed.destroy()


def padding(run, steps) -> dict:
    """Real input tokens per example and the padded share of the encoder positions, over `steps`, all ranks:
    each micro batch is padded to its longest row (the trainer's dynamic padding)."""
    world, real, padded, examples = run.dist.world_size, 0, 0, 0
    for step in steps:
        rows = run.state.order.global_indices(step)
        for rank in range(world):
            for micro in run.state.order.micro_batches(step, rank, world, run.state.layout.micro):
                lengths = [len(run.data.train.input_ids[rows[i]]) for i in micro]
                real, padded = real + sum(lengths), padded + max(lengths) * len(lengths)
                examples += len(lengths)
    return {"input_tokens_per_example": real / examples, "input_pad_fraction": 1 - real / padded}


def trainer_overrides(spec: dict, size: Size) -> list[str]:
    big = 1_000_000  # max_steps: keeps the schedule's rate non-zero for however many steps we time
    return model_overrides(size) + [
        f"prompt.method={spec['method']}", f"prompt.num_prompts={spec['num_prompts']}",
        f"prompt.prompt_length={spec['prompt_length']}", f"train.micro_batch_size={size.micro_batch}",
        "train.grad_accum_steps=1", f"train.max_steps={big}", f"train.log_every={big}", "train.eval_every=0",
        f"ds_config={spec['ds_config']}", f"output_dir={spec['out_dir']}", "overwrite=true",
        f"data.max_source_length={size.seq_len + spec['prompt_length'] + 1}",
        f"data.max_target_length={size.target_len}",
        f"train.activation_checkpointing={str(bool(spec.get('activation_checkpointing'))).lower()}",
        f"data.group_by_length={spec.get('group_by_length', 0)}",
        f"train.compile={str(bool(spec.get('compile'))).lower()}",
        *spec.get("overrides", [])]


def bare_step(run, batch: dict, tdist, marks: list | None) -> None:
    """forward -> backward -> one flat all-reduce of the trainable gradients -> optimizer step."""
    backbone, smop, device = run.model.backbone, run.model.method, run.dist.device
    mark(marks, "forward", device)
    labels = batch["labels"]
    logits, routing = (bare_causal_logits if run.model.family is causal else bare_seq2seq_logits)(backbone, smop, batch)
    loss = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100) + routing.aux_loss
    mark(marks, "backward", device)
    loss.backward()
    mark(marks, "communication", device)
    params = run.state.trainable
    if tdist.get_world_size() > 1:
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
        tdist.all_reduce(flat)
        flat /= tdist.get_world_size()
        for p, chunk in zip(params, flat.split([p.numel() for p in params])):
            p.grad = chunk.view_as(p)
    mark(marks, "optimizer", device)
    run.state.optimizer.step()
    run.state.optimizer.zero_grad(set_to_none=True)
    mark(marks, "end", device)


def bare_seq2seq_logits(backbone, smop, batch: dict):
    """T5: [prompt ; input] into the encoder, the shifted targets into the decoder. Logits (batch, T, V)."""
    tokens = backbone.get_input_embeddings()(batch["input_ids"])  # (batch, S, d)
    prompts, routing = smop(tokens, batch["attention_mask"])  # (batch, l, d) fp32
    embeds = torch.cat([prompts.to(tokens.dtype), tokens], 1)
    mask = torch.cat([batch["attention_mask"].new_ones(prompts.shape[:2]), batch["attention_mask"]], 1)
    logits = backbone(inputs_embeds=embeds, attention_mask=mask,
                      decoder_input_ids=backbone._shift_right(batch["labels"])).logits
    return logits, routing


def bare_causal_logits(backbone, smop, batch: dict):
    """A causal LM: [prompt ; input ; target] in one sequence, positions from the mask, logits of the T + 1
    last columns only, the last dropped (docs/method.md §10). Logits (batch, T, V). The input is right-aligned
    against the target (a no-op on fixed-length rows) so that the column before each target token is real."""
    labels, width = batch["labels"], batch["input_ids"].shape[1]
    embedded = backbone.get_input_embeddings()(torch.cat([batch["input_ids"], labels.clamp(min=0)], 1))
    tokens, input_mask = causal.right_align(embedded[:, :width], batch["attention_mask"])  # (batch, S, d), (batch, S)
    prompts, routing = smop(tokens, input_mask)  # (batch, l, d) fp32
    embeds = torch.cat([prompts.to(tokens.dtype), tokens, embedded[:, width:]], 1)
    mask = torch.cat([input_mask.new_ones(prompts.shape[:2]), input_mask, (labels != -100).to(input_mask.dtype)], 1)
    logits = backbone(inputs_embeds=embeds, attention_mask=mask, position_ids=(mask.cumsum(1) - 1).clamp(min=0),
                      use_cache=False, logits_to_keep=labels.shape[1] + 1).logits[:, :-1]
    return logits, routing


def paired_overhead(bare_one_step, run, device: torch.device, steps: int) -> dict:
    """Alternate a bare step and a `train_step` on the same model, timing each: machine-load drift hits both
    alike, so the ratio of their medians is the trainer's overhead even on a shared machine."""
    from trainer.loop import train_step

    out = {"bare": [], "trainer": []}
    for _ in range(steps):
        for name, step in (("bare", bare_one_step), ("trainer", lambda: train_step(run))):
            sync(device)
            started = time.perf_counter()
            step()
            sync(device)
            out[name].append(time.perf_counter() - started)
        run.state.step += 1
    return out


def compile_ab(run, device: torch.device, steps: int) -> dict:
    """train.compile arms: alternate `train_step` with the blocks' eager and compiled forwards on the same
    model (trainer/runtime/compile.py keeps the eager one beside the compiled), so load drift hits both alike."""
    from trainer.loop import train_step

    model = getattr(run.model.backbone, "module", run.model.backbone)
    blocks = run.model.family.blocks
    wrappers = [b.forward for b in blocks(model)]
    out = {"eager": [], "compiled": []}
    try:
        for _ in range(steps):
            for name in ("eager", "compiled"):
                for b, w in zip(blocks(model), wrappers):
                    b.forward = w.eager if name == "eager" else w
                sync(device)
                started = time.perf_counter()
                train_step(run)
                sync(device)
                out[name].append(time.perf_counter() - started)
                run.state.step += 1
    finally:
        for b, w in zip(blocks(model), wrappers):
            b.forward = w
    return out


def mark(marks: list | None, name: str, device: torch.device) -> None:
    if marks is not None:
        sync(device)
        marks.append((name, time.perf_counter()))


def bare_phases(one_step, device: torch.device, steps: int) -> dict:
    totals: dict[str, float] = {}
    for _ in range(steps):
        marks: list = []
        one_step(marks)
        for (name, t0), (_, t1) in zip(marks, marks[1:]):
            totals[name] = totals.get(name, 0.0) + t1 - t0
    return {k: v / max(1, steps) for k, v in totals.items()}


def trainer_phases(run, device: torch.device, steps: int) -> dict:
    """Split `train_step`'s time by wrapping its forward (`PromptedModel.loss_sum`) and gradient all-reduce
    (`distributed.all_reduce_grads`) with syncs and clock reads. Between them: data = step start to first
    forward (collate, host-to-device, token-count all-reduce); backward = forward end to the next forward or
    the all-reduce; optimizer = all-reduce end to step end (clip, step, schedule, zero_grad). ZeRO-3's
    gathers happen inside forward and backward and are counted there."""
    from trainer.runtime import distributed
    from trainer.loop import train_step

    model, marks = run.model, []
    real_loss_sum, real_all_reduce = model.loss_sum, distributed.all_reduce_grads

    def timed(name_in, name_out, fn):
        def wrapper(*args, **kwargs):
            mark(marks, name_in, device)
            out = fn(*args, **kwargs)
            mark(marks, name_out, device)
            return out
        return wrapper

    model.loss_sum = timed("forward", "backward", real_loss_sum)
    distributed.all_reduce_grads = timed("communication", "optimizer", real_all_reduce)
    totals: dict[str, float] = {}
    try:
        for _ in range(steps):
            marks.clear()
            mark(marks, "data", device)
            train_step(run)
            run.state.step += 1
            mark(marks, "end", device)
            for (name, t0), (_, t1) in zip(marks, marks[1:]):
                totals[name] = totals.get(name, 0.0) + t1 - t0
    finally:
        del model.loss_sum  # back to the class's method
        distributed.all_reduce_grads = real_all_reduce
    return {k: v / max(1, steps) for k, v in totals.items()}


def generation_latency(run, batch: dict, gen_tokens: int, repeats: int) -> float:
    """Median seconds to generate exactly `gen_tokens` tokens for one micro batch (greedy, every rank)."""
    device, model = run.dist.device, run.model
    batch = {k: v.to(device) for k, v in batch.items()}
    model.train(False)
    times = []
    with torch.no_grad():
        for i in range(repeats + 1):  # the first call warms up
            sync(device)
            started = time.perf_counter()
            model.family.generate(model.backbone, model.prompt_fn(), batch, gen_tokens, run.dist.world_size > 1,
                                  min_new_tokens=gen_tokens)
            sync(device)
            if i:
                times.append(time.perf_counter() - started)
    model.train(True)
    return sorted(times)[len(times) // 2]


if __name__ == "__main__":
    if sys.argv[1] == "--peak":
        gpu = torch.device("cuda", 0)
        emit({"matmul_peak_flops": matmul_peak_flops(gpu), "device": device_info(gpu)})
    else:
        main(json.loads(sys.argv[1]))
