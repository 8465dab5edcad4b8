"""The alternative a user would pick today: Hugging Face `Trainer` + PEFT prompt tuning under DeepSpeed.

    torchrun --nproc_per_node 2 -m tools.bench.hf_peft '<spec json>'     (tools/bench/speed.py writes the spec)

Same backbone shape (the trainer's own config for the size: a T5Config, or for a causal size the LlamaConfig
of its random Llama; random weights), same synthetic fixed-length rows, same ZeRO stage and precision (the
arm's ds_config, batch keys filled), same optimiser (AdamW, lr 0.3, clip 1.0, linear schedule). PEFT is a
benchmark-only dependency (`pip install -e ".[bench]"`).

On a T5, `TaskType.SEQ_2_SEQ_LM`: the prompt before the encoder input. On a causal LM, `TaskType.CAUSAL_LM`:
the same rows as one sequence, input then target, labels -100 over the input (the model shifts them itself),
PEFT prepending the L virtual tokens (and -100 labels for them). Unlike the trainer, which computes logits for
the target's T + 1 columns only, the HF model computes them for every column: that is what a user of
HF + PEFT gets, and part of what the comparison measures.
Step times come from a TrainerCallback (on_step_begin/on_step_end, synced); HF Trainer runs forward,
backward and the DeepSpeed step inside one `training_step`, so no phase split is reported for this arm.
"""
from __future__ import annotations

import copy
import json
import os
import sys
import time
from pathlib import Path

import torch

from tools.bench.common import (Size, combine, emit, peak_memory, rank_figures, reset_peak_memory, size_config, sync,
                                synthetic_rows)


class Rows(torch.utils.data.Dataset):
    """Training rows from `synthetic_rows`: input ids (S) and labels (T); causal: one sequence (S + T) of input
    then target, with labels -100 over the input."""

    def __init__(self, input_ids: list, labels: list, causal: bool):
        inputs, targets = torch.tensor(input_ids), torch.tensor(labels)
        if causal:
            self.input_ids = torch.cat([inputs, targets], 1)
            self.labels = torch.cat([torch.full_like(inputs, -100), targets], 1)
        else:
            self.input_ids, self.labels = inputs, targets

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.input_ids[i], "attention_mask": torch.ones_like(self.input_ids[i]),
                "labels": self.labels[i]}


def main(spec: dict) -> None:
    import deepspeed
    import torch.distributed as tdist
    from peft import PromptTuningConfig, TaskType, get_peft_model
    from transformers import (AutoModelForCausalLM, T5ForConditionalGeneration, Trainer, TrainerCallback,
                              TrainingArguments)

    from trainer.runtime.ds_config import load_ds_config

    size = Size(**spec["size"])
    world = int(os.environ.get("WORLD_SIZE", 1))
    ds = copy.deepcopy(load_ds_config(str(Path(spec["ds_config"]) if Path(spec["ds_config"]).is_absolute()
                                          else Path(__file__).resolve().parents[2] / spec["ds_config"])))
    bf16 = bool(ds.get("bf16", {}).get("enabled"))
    # "auto": HF fills the batch keys from TrainingArguments (and checks its world size against WORLD_SIZE below).
    ds.update(train_micro_batch_size_per_gpu="auto", gradient_accumulation_steps="auto", train_batch_size="auto",
              gradient_clipping=1.0)
    total = spec["warmup"] + spec["steps"]
    args = TrainingArguments(
        output_dir=spec["out_dir"], per_device_train_batch_size=size.micro_batch, gradient_accumulation_steps=1,
        max_steps=total, learning_rate=0.3, weight_decay=1e-5, warmup_steps=0.06, lr_scheduler_type="linear",
        max_grad_norm=1.0, optim="adamw_torch", bf16=bf16, deepspeed=ds, logging_steps=10**9,
        save_strategy="no", report_to=[], dataloader_num_workers=0, remove_unused_columns=False,
        disable_tqdm=True, seed=42, use_cpu=not torch.cuda.is_available())
    if args.world_size != world:
        raise RuntimeError(f"HF TrainingArguments sees world size {args.world_size}, torchrun started {world}")
    # On the CPU accelerate joins the process group through torch.distributed alone; zero.Init asks
    # deepspeed.comm for the world size, so attach it to the existing group (what accelerate does on GPUs).
    deepspeed.init_distributed()
    # Built after TrainingArguments: its HfDeepSpeedConfig makes transformers construct into ZeRO-3 partitions.
    config, causal = size_config(size), size.family == "causal"
    dtype = torch.bfloat16 if bf16 else torch.float32
    if causal:  # as trainer/models/build.py builds the random Llama
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        peft_config = PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=spec["prompt_length"])
    else:
        model = T5ForConditionalGeneration._from_config(config, dtype=dtype)
        # num_transformer_submodules=1: the prompt before the encoder input only, as in Lester et al. and this
        # trainer. PEFT's SEQ_2_SEQ_LM default (2) also prepends another L virtual tokens to the decoder input,
        # twice the trainable parameters and L more decoder positions: a different, heavier method.
        peft_config = PromptTuningConfig(task_type=TaskType.SEQ_2_SEQ_LM, num_transformer_submodules=1,
                                         num_virtual_tokens=spec["prompt_length"])
    model = get_peft_model(model, peft_config)
    n = size.micro_batch * world * 8
    input_ids, labels = synthetic_rows(n, size.seq_len, size.target_len, size.vocab_size, 42)

    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    times: list[float] = []

    class Timer(TrainerCallback):
        started = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == spec["warmup"]:
                sync(device)
                reset_peak_memory(device)
            sync(device)
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            sync(device)
            if state.global_step > spec["warmup"]:
                times.append(time.perf_counter() - self.started)

    trainer = Trainer(model=model, args=args, train_dataset=Rows(input_ids, labels, causal), callbacks=[Timer()])
    trainer.train()
    mem = peak_memory(device)
    latency = None
    if spec["infer_repeats"] > 0:  # generation from the inputs alone (T5: into the encoder; causal: the prefill)
        prefix = torch.tensor(input_ids[: size.micro_batch])
        latency = generation_latency(trainer.model, {"input_ids": prefix, "attention_mask": torch.ones_like(prefix)},
                                     device, size.gen_tokens, spec["infer_repeats"], world > 1)
    per_rank = [None] * world
    tdist.all_gather_object(per_rank, rank_figures(times, {}, mem, latency))
    if tdist.get_rank() == 0:
        trainable = [p for p in model.parameters() if p.requires_grad]
        emit({"arm": spec["arm"], "status": "ok", "world_size": world, "global_batch": size.micro_batch * world,
              "micro_batch": size.micro_batch,
              "trainable_params": sum(getattr(p, "ds_numel", p.numel()) for p in trainable),
              "backbone_dtype": str(dtype).removeprefix("torch."),
              **combine(per_rank, size.micro_batch * world, size.seq_len + size.target_len, size.micro_batch)})
    tdist.barrier()


def generation_latency(model, batch: dict, device, gen_tokens: int, repeats: int, synced: bool) -> float:
    """Median seconds to generate exactly `gen_tokens` tokens for `batch` (input ids and mask), greedy."""
    batch = {k: v.to(device) for k, v in batch.items()}
    model.eval()
    times = []
    with torch.no_grad():
        for i in range(repeats + 1):  # the first call warms up
            sync(device)
            started = time.perf_counter()
            model.generate(**batch, max_new_tokens=gen_tokens, min_new_tokens=gen_tokens, do_sample=False,
                           num_beams=1, synced_gpus=synced)
            sync(device)
            if i:
                times.append(time.perf_counter() - started)
    return sorted(times)[len(times) // 2]


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
