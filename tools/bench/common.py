"""What every benchmark arm shares: model sizes, the synthetic data shape, timers, memory peaks, FLOPs.

Imported by tools/bench/speed.py (the orchestrator) and by the per-arm workers it launches
(tools/bench/worker.py for this trainer and the bare loop, tools/bench/hf_peft.py for HF Trainer + PEFT).
The trainer never imports this file.
"""
from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from trainer.config import load_config
from trainer.models.build import backbone_config
from trainer.perf.flops import method_flops
from trainer.perf.shapes import CAUSAL_SHAPES, T5_SHAPES, CausalShape, T5Shape, shape_of

REPO = Path(__file__).resolve().parents[2]
RESULT_PREFIX = "BENCH_RESULT "  # a worker's one result line on stdout; the orchestrator greps for it


@dataclass(frozen=True)
class Size:
    """A backbone shape and the per-size defaults of the data shape. The shape fields are the trainer's
    `model.tiny.*` (a causal LM's: d_model = hidden size, d_ff = intermediate size, d_kv = head width)."""

    d_model: int
    d_ff: int
    d_kv: int
    num_heads: int
    num_layers: int
    vocab_size: int
    seq_len: int
    """S: input tokens per example (the prompt's l positions come on top, as in a real run)."""
    target_len: int
    """T: target tokens per example, </s> included."""
    micro_batch: int
    gen_tokens: int
    """Tokens generated per example for the inference latency."""
    ds_config: str
    """ZeRO-3 config of the size; the ZeRO-2 arm uses its stage-2 sibling."""
    family: str = "seq2seq"
    """model.family of the random backbone: seq2seq (a T5) or causal (a Llama)."""
    kv_heads: int = 0
    """Causal family: key/value heads (grouped-query attention); 0: num_heads."""


# T5 v1.1 shapes (trainer/perf/shapes.py, from google/t5-{large,xl,xxl}-lm-adapt's config.json). The trainer's random backbone ties the output
# layer to the embedding (see trainer/runtime/backbone.py); v1.1 unties it. Compute per token is the same either way,
# the parameter count differs by vocab x d (66M for XL). S = 512 is the SMoP/PT papers' SuperGLUE source length
# (and the MFU target's); T = 8 covers the label words of every SuperGLUE task but ReCoRD.
def _t5(name: str, micro_batch: int, ds_config: str) -> Size:
    s = T5_SHAPES[name]
    return Size(s.d_model, s.d_ff, s.d_kv, s.num_heads, s.num_layers, s.vocab_size, 512, 8, micro_batch, 8, ds_config)


# Decoder-only shapes (trainer/perf/shapes.py, from the checkpoints' config.json). The trainer's random Llama
# ties the output layer to the embedding (trainer/models/build.py); Llama-3.1-8B unties it: same compute,
# vocab x d (525M) more parameters in the real checkpoint. Micro batch 8 at S = 512: the prompt-tuning-100
# sequence (620 positions) keeps about 4 GB of bf16 activations per example through 32 layers, so 8 of them
# and the 15 GB of weights fit an 80 GB GPU on one rank under ZeRO-3 (and HF's full-sequence logits beside).
def _causal(name: str, micro_batch: int, ds_config: str) -> Size:
    s = CAUSAL_SHAPES[name]
    return Size(s.hidden_size, s.intermediate_size, s.head_dim, s.num_heads, s.num_layers, s.vocab_size, 512, 8,
                micro_batch, 8, ds_config, family="causal", kv_heads=s.kv_heads)


SIZES = {
    "tiny": Size(128, 512, 32, 4, 4, 2048, 128, 8, 8, 8, "ds_configs/cpu_zero3.json"),
    "t5-large": _t5("t5-large", 32, "ds_configs/t5_large_zero3_bf16.json"),
    "t5-xl": _t5("t5-xl", 16, "ds_configs/t5_xl_zero3_bf16.json"),
    "t5-xxl": _t5("t5-xxl", 8, "ds_configs/t5_xl_zero3_bf16.json"),
    # the tiny T5's widths as a 4-layer Llama with 2 key/value heads (grouped-query attention), for the CPU
    "tiny-causal": Size(128, 512, 32, 4, 4, 2048, 128, 8, 8, 8, "ds_configs/cpu_zero3.json", family="causal",
                        kv_heads=2),
    "llama-8b": _causal("llama-3.1-8b", 8, "ds_configs/zero3_bf16.json"),
}


def model_overrides(size: Size) -> list[str]:
    """Trainer config overrides that build exactly this shape as the random 'tiny' backbone."""
    causal = ["model.family=causal", f"model.tiny.kv_heads={size.kv_heads}"] if size.family == "causal" else []
    return ["model.name_or_path=tiny", f"model.tiny.d_model={size.d_model}", f"model.tiny.d_ff={size.d_ff}",
            f"model.tiny.d_kv={size.d_kv}", f"model.tiny.num_heads={size.num_heads}",
            f"model.tiny.num_layers={size.num_layers}", f"model.tiny.vocab_size={size.vocab_size}", *causal]


def size_config(size: Size):
    """The Hugging Face config of the backbone the trainer builds for `size` (a T5Config or a LlamaConfig)."""
    return backbone_config(load_config(None, model_overrides(size)).model, size.vocab_size)


def size_shape(size: Size) -> T5Shape | CausalShape:
    """`size`'s shape as trainer/perf reads it: what the FLOP counts of every arm come from."""
    return shape_of(size_config(size))


def synthetic_rows(n: int, seq_len: int, target_len: int, vocab: int, seed: int) -> tuple[list, list]:
    """n fixed-length examples: input ids (S, ending in </s>=1) and labels (T, ending in </s>).

    Every example has the same length, so every arm pads nothing and sees the same token count.
    Ids start at 3 (skip pad, </s>, unk)."""
    gen = torch.Generator().manual_seed(seed)
    inputs = torch.randint(3, vocab, (n, seq_len - 1), generator=gen)
    labels = torch.randint(3, vocab, (n, target_len - 1), generator=gen)
    eos = torch.ones(n, 1, dtype=torch.long)
    return torch.cat([inputs, eos], 1).tolist(), torch.cat([labels, eos], 1).tolist()


def varied_rows(n: int, seq_len: int, target_len: int, vocab: int, seed: int) -> tuple[list, list]:
    """`synthetic_rows` cut to lengths that vary as real SuperGLUE inputs do: log-normal with median S/4 and
    sigma 0.6, clipped to [8, S] (an assumed spread, for --lengths varied and the -grouped arms)."""
    inputs, labels = synthetic_rows(n, seq_len, target_len, vocab, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    lengths = (torch.randn(n, generator=gen) * 0.6).exp().mul(seq_len / 4).round().long().clamp(8, seq_len)
    return [row[: length - 1] + [1] for row, length in zip(inputs, lengths.tolist())], labels


# --- timing and memory ---------------------------------------------------------------------------------

def sync(device: torch.device) -> None:
    """Wait for queued device work, so a host clock read brackets what it claims to (no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak: the CUDA allocator's, or the process's resident set (Linux: clear_refs 5 resets VmHWM)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass  # not Linux: the peak then also covers model construction; peak_memory says which


def peak_memory(device: torch.device) -> dict:
    """Peak bytes since reset_peak_memory and what was measured."""
    if device.type == "cuda":
        return {"bytes": int(torch.cuda.max_memory_allocated(device)), "kind": "cuda_max_memory_allocated"}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return {"bytes": int(line.split()[1]) * 1024, "kind": "cpu_peak_rss_since_reset"}
    except OSError:
        pass
    return {"bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "kind": "cpu_max_rss_process"}


def matmul_peak_flops(device: torch.device, n: int = 8192, iters: int = 200) -> float | None:
    """Measured dense bf16 matmul throughput (FLOP/s) of this GPU: the denominator of MFU. None on the CPU."""
    if device.type != "cuda":
        return None
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(10):  # clocks up, cuBLAS picks its kernel
        a @ b
    sync(device)
    started = time.perf_counter()
    for _ in range(iters):
        a @ b
    sync(device)
    return 2 * n**3 * iters / (time.perf_counter() - started)


# --- FLOPs: analytic, from trainer.perf.flops ----------------------------------------------------------------
# Counted from the backbone's shape (T5 or causal LM) and the sequence lengths: the DeepSpeed flops profiler is
# wrong for a frozen ZeRO-3 backbone (it assumes backward = 2x forward and counts partitioned weights as 0).

def _method_flops(shape: T5Shape | CausalShape, method: str, num_prompts: int, prompt_length: int, seq_len: int,
                  target_len: int):
    try:
        return float(method_flops(method, shape, seq_len, target_len, num_prompts or 1, prompt_length or 0))
    except ValueError:  # an arm whose method trainer.perf.flops does not know
        return None


def inference_flops_per_example(shape: T5Shape | CausalShape, method: str, num_prompts: int, prompt_length: int,
                                seq_len: int, target_len: int, gen_tokens: int) -> float | None:
    """Inference FLOPs of one example with gen_tokens generated: T5's encoder over prompt + input and decoder
    over gen_tokens; a causal LM's prompt + input + gen_tokens sequence (trainer/perf/flops.py)."""
    return _method_flops(shape, method, num_prompts, prompt_length, seq_len, gen_tokens)


def train_flops_per_example(shape: T5Shape | CausalShape, method: str, num_prompts: int, prompt_length: int,
                            seq_len: int, target_len: int) -> float | None:
    """Model FLOPs of one training example, for MFU. Backward through a frozen backbone computes activation
    gradients only (one matmul per forward matmul): 2x forward; full fine-tuning adds weight gradients: 3x."""
    forward = _method_flops(shape, method, num_prompts, prompt_length, seq_len, target_len)
    if forward is None:
        return None
    return forward * (3 if method == "full_finetune" else 2)


def flops_source() -> str:
    return "analytic: trainer.perf.flops.method_flops (2 x MACs of every matmul)"


# --- results ---------------------------------------------------------------------------------------------

def emit(result: dict) -> None:
    """One JSON line the orchestrator collects (printed by rank 0 only)."""
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    sys.stdout.flush()


def rank_figures(times: list[float], phases: dict, mem: dict, latency: float | None) -> dict:
    """This rank's raw figures, combined over ranks by `combine` on rank 0."""
    return {"step_s": times, "phases": phases, "memory": mem, "latency_s": latency}


def combine(per_rank: list[dict], global_batch: int, tokens_per_example: float, infer_batch: int,
            mean: bool = False) -> dict:
    """Figures of an arm from every rank's: the slowest rank sets the pace (ranks wait for each other).

    The step time is the median of the timed steps, or their mean where batches differ in length (mean=True).
    """
    average = statistics.fmean if mean else median
    step = max(average(r["step_s"]) for r in per_rank)
    latency = [r["latency_s"] for r in per_rank if r["latency_s"] is not None]
    phase_names = sorted({k for r in per_rank for k in r["phases"]})
    return {
        "step_time_s": step,
        "step_times_s_rank0": per_rank[0]["step_s"],
        "samples_per_s": global_batch / step,
        "tokens_per_s": global_batch * tokens_per_example / step,
        "peak_memory_bytes_per_rank": [r["memory"]["bytes"] for r in per_rank],
        "peak_memory_bytes": max(r["memory"]["bytes"] for r in per_rank),
        "peak_memory_kind": per_rank[0]["memory"]["kind"],
        "phases_s": {k: max(r["phases"].get(k, 0.0) for r in per_rank) for k in phase_names},
        "latency_s_per_example": (max(latency) / infer_batch) if latency else None,
    }


def device_info(device: torch.device) -> dict:
    if device.type == "cuda":
        return {"type": "cuda", "name": torch.cuda.get_device_name(device), "count": torch.cuda.device_count()}
    return {"type": "cpu", "name": _cpu_name(), "cores": os.cpu_count(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "torch_threads": torch.get_num_threads()}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "cpu"


def as_dict(size: Size) -> dict:
    return asdict(size)
