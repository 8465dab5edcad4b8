"""Benchmark arms side by side in one invocation: one subprocess tree per arm, same backbone shape, same
synthetic data shape, same hardware. Prints a table with ratios to a baseline arm and writes every figure.

    python -m tools.bench --size tiny                                   # CPU: 2 gloo ranks per arm
    python -m tools.bench --size t5-xl --arms smop-4x5,pt-100,hf-peft-100,bare --baseline pt-100   # a GPU
    python -m tools.bench --size tiny-causal                            # the same arms on a tiny random Llama
    python -m tools.bench --size llama-8b --arms smop-4x5,pt-100,hf-peft-100 --baseline pt-100     # a GPU

Sizes (tools/bench/common.py SIZES): T5s (tiny, t5-large, t5-xl, t5-xxl) and decoder-only LMs (tiny-causal,
llama-8b: Llama-3.1-8B's shape), each a random backbone the trainer builds from model.tiny.*.

Arms (`--arms`, comma-separated; names are parsed, so other shapes work too):
    smop-KxL          this trainer, SMoP with k prompts of l tokens (ZeRO-3)
    smop-KxL-zero2    the same under ZeRO-2
    ...-ckpt          suffix for any trainer arm: backbone activation checkpointing on (memory/speed trade-off)
    ...-eager         suffix for any trainer arm: eager attention instead of transformers' default SDPA
    ...-grouped       suffix for any trainer arm: data.group_by_length=50 (length-grouped batches; pair it
                      with --lengths varied, since fixed-length rows have nothing to group)
    ...-gathered      suffix for any trainer arm: the latency measured with the ZeRO-3 backbone gathered once
                      beforehand (trainer/runtime/eval_gather.py, as evaluation does when it fits); the one-time
                      gather is reported apart as gather_s
    ...-compile       suffix for any trainer arm: train.compile=true (torch.compile of each backbone block; the
                      compile itself happens in the warm-up steps, reported as warmup_step_s)
    pt-L              this trainer, prompt tuning (prompt.method=prompt_tuning num_prompts=1 prompt_length=L)
    hf-peft-L         Hugging Face Trainer + PEFT prompt tuning (num_virtual_tokens=L), same ZeRO stage
                      (SEQ_2_SEQ_LM on a T5, CAUSAL_LM on a causal size)
    full-ft           prompt.method=full_finetune, when the trainer has it
    bare              a bare forward/backward/all-reduce/step loop over smop-4x5's model (trainer overhead)
See docs/benchmarks.md for the figures, the targets and how to read them.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

from tools.bench.common import REPO, RESULT_PREFIX, SIZES, as_dict, device_info
from tools.bench.common import flops_source, inference_flops_per_example, size_shape, train_flops_per_example
from trainer.runtime.distributed import free_port
from trainer.monitor.provenance import git_revision

DEFAULT_ARMS = "smop-4x5,pt-5,pt-20,pt-100,smop-4x5-zero2,hf-peft-100,full-ft,bare"
FULL_FT = "full_finetune"
GROUP_WINDOW = 50  # global batches per length-sorted window in the -grouped arms


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="tiny", choices=sorted(SIZES))
    p.add_argument("--arms", default=DEFAULT_ARMS)
    p.add_argument("--baseline", default="pt-100", help="arm the ratio columns divide by")
    p.add_argument("--nproc", type=int, default=0, help="ranks per arm; 0: 2 on the CPU, 1 per visible GPU")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps before the timed ones")
    p.add_argument("--steps", type=int, default=10, help="timed steps (the median is reported)")
    p.add_argument("--phase-steps", type=int, default=3, help="steps of the separate instrumented pass")
    p.add_argument("--infer-repeats", type=int, default=3, help="timed generate calls (0: skip latency)")
    p.add_argument("--seq-len", type=int, help="S, input tokens per example (default: the size's)")
    p.add_argument("--lengths", default="fixed", choices=["fixed", "varied"],
                   help="fixed: every input S tokens; varied: SuperGLUE-like spread up to S (throughput then "
                        "from the mean step time and the real tokens)")
    p.add_argument("--target-len", type=int, help="T, target tokens per example")
    p.add_argument("--micro-batch", type=int, help="examples per rank per step")
    p.add_argument("--gen-tokens", type=int, help="tokens generated per example for the latency")
    p.add_argument("--out", default="runs/bench", help="directory for bench.json and per-arm logs")
    p.add_argument("--arm-timeout", type=int, default=3600, help="seconds before an arm is killed")
    p.add_argument("--jobs", type=int, default=1,
                   help="arms run at once; above 1 they share the machine, so their figures do not compare: "
                        "only to check that the arms run (tools/gpu_check.sh --dry-run)")
    p.add_argument("--override", action="append", default=[], help="trainer key=value for the trainer arms")
    return p.parse_args(argv)


def arm_spec(name: str, args, size, on_gpu: bool, out: Path) -> dict:
    """What the worker of arm `name` runs; 'skip'/'error' fields instead when it cannot run here."""
    base = {"arm": name, "size": as_dict(size), "warmup": args.warmup, "steps": args.steps,
            "phase_steps": args.phase_steps, "infer_repeats": args.infer_repeats,
            "out_dir": str(out / name), "overrides": args.override, "ds_config": size.ds_config,
            "lengths": args.lengths}
    if name == "bare":
        return {**base, "kind": "bare", "method": "smop", "num_prompts": 4, "prompt_length": 5}
    if name == "full-ft":
        from trainer.methods.registry import registered

        if FULL_FT not in registered():
            return {**base, "skip": f"prompt.method={FULL_FT} is not available on this branch"}
        # prompt sizes are placeholders the full fine-tuning method is expected to ignore
        return {**base, "kind": "trainer", "method": FULL_FT, "num_prompts": 1, "prompt_length": 1}
    for suffix, flag, value in (("-ckpt", "activation_checkpointing", True), ("-eager", "eager_attention", True),
                                ("-grouped", "group_by_length", GROUP_WINDOW), ("-gathered", "gathered_eval", True),
                                ("-compile", "compile", True)):
        if name.endswith(suffix) and not name.startswith("hf-peft"):
            spec = arm_spec(name.removesuffix(suffix), args, size, on_gpu, out)
            return {**spec, "arm": name, "out_dir": str(out / name), flag: value}
    m = re.fullmatch(r"smop-(\d+)x(\d+)(-zero2)?", name)
    if m:
        spec = {**base, "kind": "trainer", "method": "smop", "num_prompts": int(m[1]), "prompt_length": int(m[2])}
        if m[3]:
            spec["ds_config"], spec["ds_config_source"] = zero2_config(size.ds_config, on_gpu, out)
        return spec
    m = re.fullmatch(r"pt-(\d+)", name)
    if m:
        return {**base, "kind": "trainer", "method": "prompt_tuning", "num_prompts": 1, "prompt_length": int(m[1])}
    m = re.fullmatch(r"hf-peft-(\d+)", name)
    if m:
        return {**base, "kind": "hf_peft", "method": "prompt_tuning", "num_prompts": 1, "prompt_length": int(m[1])}
    return {**base, "error": f"unknown arm '{name}' (see --help)"}


def zero2_config(zero3_path: str, on_gpu: bool, out: Path) -> tuple[str, str]:
    """A shipped ZeRO-2 config if the branch has one, else the size's ZeRO-3 config with stage 2."""
    shipped = ["ds_configs/zero2_bf16.json", zero3_path.replace("zero3", "zero2")] if on_gpu else \
        ["ds_configs/cpu_zero2.json"]
    for path in shipped:
        if (REPO / path).exists():
            return path, "shipped"
    ds = json.loads((REPO / zero3_path).read_text())
    zero = {k: v for k, v in ds.get("zero_optimization", {}).items() if not k.startswith("stage3_")}
    ds["zero_optimization"] = {**zero, "stage": 2}
    derived = out / "zero2_derived.json"
    derived.write_text(json.dumps(ds, indent=2) + "\n")
    return str(derived), f"derived from {zero3_path} (no shipped ZeRO-2 config on this branch)"


def run_arm(spec: dict, nproc: int, env: dict, timeout: int, out: Path) -> dict:
    """Launch one arm under torchrun and return its result line, or why there is none."""
    if "skip" in spec or "error" in spec:
        return {"arm": spec["arm"], "status": "skipped" if "skip" in spec else "failed",
                "error": spec.get("skip") or spec["error"]}
    worker = "tools.bench.hf_peft" if spec["kind"] == "hf_peft" else "tools.bench.worker"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
           "--master_port", str(free_port()), "-m", worker, json.dumps(spec)]  # a module: it imports tools.*
    log = out / f"{spec['arm']}.log"
    started = time.time()
    with subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            # SIGTERM: torchrun stops its ranks before it exits (a SIGKILL would leave them running)
            proc.terminate()
            try:
                stdout, stderr = proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                stdout, stderr = proc.communicate()
            stderr, rc = stderr + f"\ntimed out after {timeout} s", -1
    log.write_text(f"$ {' '.join(cmd)}\n--- stdout\n{stdout}\n--- stderr\n{stderr}")
    lines = [line for line in stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if lines:
        result = json.loads(lines[-1][len(RESULT_PREFIX):])
        if rc != 0:  # seen on the CPU: "terminate called without an active exception" at process teardown
            result["exit_warning"] = f"exit code {rc} after the result line: {_error_line(stderr, rc)}"
    else:
        result = {"arm": spec["arm"], "status": "failed", "error": _error_line(stderr, rc), "log": str(log)}
    result.update(wall_s=round(time.time() - started, 1), ds_config=spec.get("ds_config"),
                  method=spec.get("method"), num_prompts=spec.get("num_prompts"),
                  prompt_length=spec.get("prompt_length"))
    for flag in ("activation_checkpointing", "eager_attention", "compile"):
        result[flag] = bool(spec.get(flag))
    result.update(group_by_length=spec.get("group_by_length", 0), lengths=spec.get("lengths"))
    if "ds_config_source" in spec:
        result["ds_config_source"] = spec["ds_config_source"]
    return result


def add_flops(result: dict, size, peak: float | None) -> None:
    """FLOPs per example from trainer.perf.flops (through tools/bench/common.py) on the shape the trainer builds
    for the size, either family, and MFU against the measured peak."""
    args = (size_shape(size), result.get("method"), result.get("num_prompts"), result.get("prompt_length"),
            size.seq_len, size.target_len)
    result["inference_flops_per_example"] = inference_flops_per_example(*args, size.gen_tokens)
    train = train_flops_per_example(*args)
    result["train_flops_per_example"] = train
    result["flops_source"] = flops_source()
    result["mfu"] = (train * result["samples_per_s"] / (peak * result["world_size"])
                     if train and peak and result.get("status") == "ok" else None)


RATIO_KEYS = {"samples_per_s": "samples_per_s", "tokens_per_s": "tokens_per_s", "peak_memory": "peak_memory_bytes",
              "latency": "latency_s_per_example", "inference_flops": "inference_flops_per_example"}


def add_ratios(results: dict, baseline: str) -> None:
    base = results.get(baseline, {})
    for r in results.values():
        r["ratios"] = {name: (r[key] / base[key] if r.get(key) is not None and base.get(key) else None)
                       for name, key in RATIO_KEYS.items()}


def headline(results: dict, device: dict, size: str) -> list[dict]:
    """The issue's targets, evaluated where both arms ran. Informative only off an H100 with T5-XL shapes."""
    def get(arm, key):
        return results.get(arm, {}).get(key) if results.get(arm, {}).get("status") == "ok" else None

    def ratio(a, b, key):
        x, y = get(a, key), get(b, key)
        return x / y if x is not None and y else None

    rows = [("smop-4x5 / pt-100 samples/s", ratio("smop-4x5", "pt-100", "samples_per_s"), ">=", 1.2),
            ("smop-4x5 / pt-100 peak memory", ratio("smop-4x5", "pt-100", "peak_memory_bytes"), "<=", 0.75),
            ("smop-4x5 / pt-100 inference FLOPs", ratio("smop-4x5", "pt-100", "inference_flops_per_example"), "<=", 0.75),
            ("pt-100 / hf-peft-100 samples/s", ratio("pt-100", "hf-peft-100", "samples_per_s"), ">=", 1.3),
            ("smop-4x5 MFU", get("smop-4x5", "mfu"), ">=", 0.45)]
    # Paired (alternating steps in one process, see bench_worker.paired_overhead) when the bare arm ran: robust
    # to load drift between arms; else the ratio of the two arms' medians.
    overhead = get("bare", "trainer_overhead_paired")
    if overhead is None:
        between = ratio("smop-4x5", "bare", "step_time_s")
        overhead = between - 1 if between else None
    rows.append(("trainer overhead vs bare loop", overhead, "<=", 0.10))
    out = []
    for name, value, op, target in rows:
        met = None if value is None else (value >= target if op == ">=" else value <= target)
        out.append({"target": name, "value": value, "goal": f"{op} {target}", "met": met})
    return out


def print_table(results: dict, baseline: str, heads: list[dict], meta: dict) -> None:
    mib = 2**20
    cols = ["arm", "status", "samples/s", "x", "tok/s", "mem MiB", "x", "fwd/bwd/opt/comm/data ms",
            "lat ms/ex", "x", "GFLOP/ex", "x", "MFU"]
    rows = []
    for name, r in results.items():
        if r.get("status") != "ok":
            rows.append([name, r.get("status", "?"), r.get("error", "")[:150]])
            continue
        q, ph = r["ratios"], r.get("phases_s", {})
        split = "/".join(_f(ph.get(k), 1e3, 0) for k in ("forward", "backward", "optimizer", "communication", "data"))
        rows.append([name, "ok", _f(r["samples_per_s"], 1, 2), _x(q["samples_per_s"]), _f(r["tokens_per_s"], 1, 0),
                     _f(r["peak_memory_bytes"], 1 / mib, 0), _x(q["peak_memory"]), split,
                     _f(r["latency_s_per_example"], 1e3, 1), _x(q["latency"]),
                     _f(r.get("inference_flops_per_example"), 1e-9, 2), _x(q["inference_flops"]),
                     _f(r.get("mfu"), 100, 1) + ("%" if r.get("mfu") is not None else "")])
    if meta["lengths"] == "varied":
        cols.append("pad %")
        for row, r in zip(rows, results.values()):
            if len(row) == len(cols) - 1:
                row.append(_f(r.get("input_pad_fraction"), 100, 1))
    print(f"\n# {meta['size']} | {meta['device'].get('name')} | {meta['nproc']} rank(s) per arm | "
          f"S={meta['seq_len']}{' (varied lengths)' if meta['lengths'] == 'varied' else ''} "
          f"T={meta['target_len']} micro batch {meta['micro_batch']} | x = ratio to {baseline}")
    full = [cols] + [row for row in rows if len(row) == len(cols)]  # failed rows print their error unpadded
    widths = [max(len(str(row[i])) for row in full) for i in range(len(cols))]
    for row in [cols] + rows:
        if len(row) != len(cols):
            print(f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]}")
        else:
            print("  ".join(f"{str(c):<{widths[i]}}" for i, c in enumerate(row)))
    for name, r in results.items():
        if r.get("compile_speedup_paired"):
            print(f"note: {name}: compiled vs eager blocks, alternating steps in one process: "
                  f"{r['paired_eager_step_s'] * 1e3:.0f} / {r['paired_compiled_step_s'] * 1e3:.0f} ms = "
                  f"{r['compile_speedup_paired']:.2f}x; compile (first warm-up step) "
                  f"{r['warmup_step_s_rank0'][0]:.0f} s")
        if r.get("exit_warning"):
            print(f"note: {name}: figures complete, but {r['exit_warning']}")
    print("\ntargets (the issue's; on the CPU they are informative only):")
    for h in heads:
        value = "n/a" if h["value"] is None else f"{h['value']:.3f}"
        met = {None: "n/a", True: "met", False: "NOT met"}[h["met"]]
        print(f"  {h['target']:<36} {value:>8}  goal {h['goal']:<7} {met}")


def main(argv=None) -> int:
    args = parse_args(argv)
    size = SIZES[args.size]
    size = replace(size, **{k: v for k, v in {"seq_len": args.seq_len, "target_len": args.target_len,
                                             "micro_batch": args.micro_batch, "gen_tokens": args.gen_tokens}.items()
                             if v is not None})
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    import torch

    on_gpu = torch.cuda.is_available()  # does not create a CUDA context in this process
    nproc = args.nproc or (torch.cuda.device_count() if on_gpu else 2)
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    # Each rank gets its share of the cores: 2 ranks on 2 cores, each using both, run at half speed.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    peak, device = None, device_info(torch.device("cpu"))
    if on_gpu:
        probe = subprocess.run([sys.executable, "-m", "tools.bench.worker", "--peak"], cwd=REPO,
                               env=env, capture_output=True, text=True, timeout=600)
        lines = [x for x in probe.stdout.splitlines() if x.startswith(RESULT_PREFIX)]
        if not lines:  # no MFU then, but the arms still run
            print(f"[bench] matmul peak probe failed: {_error_line(probe.stderr, probe.returncode)}", file=sys.stderr)
            device = {"type": "cuda", "name": "unknown (peak probe failed)"}
        else:
            found = json.loads(lines[-1][len(RESULT_PREFIX):])
            peak, device = found["matmul_peak_flops"], found["device"]
    else:
        device.update(omp_num_threads=env["OMP_NUM_THREADS"])
        device.pop("torch_threads")
    names = [a.strip() for a in args.arms.split(",") if a.strip()]
    if args.baseline not in names:
        print(f"error: --baseline {args.baseline} is not among --arms", file=sys.stderr)
        return 2
    specs = [arm_spec(name, args, size, on_gpu, out) for name in names]  # here: they may write shared files

    def bench_arm(spec: dict) -> dict:
        print(f"[bench] {spec['arm']} ...", file=sys.stderr, flush=True)
        result = run_arm(spec, nproc, env, args.arm_timeout, out)
        if result.get("status") == "ok":
            add_flops(result, size, peak)
        print(f"[bench] {spec['arm']}: {result.get('status')} ({result.get('wall_s')} s)", file=sys.stderr,
              flush=True)
        return result

    with ThreadPoolExecutor(max(1, args.jobs)) as pool:  # a thread per running arm, waiting on its processes
        results = dict(zip(names, pool.map(bench_arm, specs)))
    add_ratios(results, args.baseline)
    heads = headline(results, device, args.size)
    meta = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "argv": sys.argv, "size": args.size,
            "shape": as_dict(size), "seq_len": size.seq_len, "target_len": size.target_len,
            "micro_batch": size.micro_batch, "lengths": args.lengths, "nproc": nproc, "jobs": args.jobs,
            "baseline": args.baseline,
            "device": device,
            "matmul_peak_flops": peak, "versions": versions(), "git_revision": git_revision(),
            "settings": {k: getattr(args, k) for k in ("warmup", "steps", "phase_steps", "infer_repeats")},
            "omp_num_threads": env["OMP_NUM_THREADS"], "flops_source": flops_source(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    (out / "bench.json").write_text(json.dumps({**meta, "arms": results, "targets": heads}, indent=2) + "\n")
    print_table(results, args.baseline, heads, meta)
    print(f"\nwrote {out / 'bench.json'}")
    return 0


def versions() -> dict:
    import importlib.metadata as md

    found = {"python": sys.version.split()[0]}
    for pkg in ("torch", "deepspeed", "transformers", "accelerate", "peft"):
        try:
            found[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            found[pkg] = None
    return found


def _f(value, scale: float, digits: int) -> str:
    return "n/a" if value is None else f"{value * scale:.{digits}f}"


def _x(ratio) -> str:
    return "-" if ratio is None else f"{ratio:.2f}"


def _error_line(stderr: str, rc: int) -> str:
    """The most telling line of a failed arm's stderr: its last exception message."""
    lines = [line.split("]: ", 1)[-1].strip() for line in stderr.splitlines()]
    errors = [line for line in lines if (re.match(r"^[\w.]*(Error|Exception)\b", line) or line.startswith("terminate called"))
              and "ChildFailedError" not in line]
    return errors[-1] if errors else f"exit code {rc}: " + (lines[-1] if lines else "no output")


if __name__ == "__main__":
    sys.exit(main())
