"""The Python half of tools/gpu_check.sh: the environment report, the bf16 ds_config of the default run, and
the final report (DIR/gpu_check.json and the printed table).

    python -m tools.cluster.gpu_check env OUT.json
    python -m tools.cluster.gpu_check train-ds-config OUT.json
    python -m tools.cluster.gpu_check report DIR [--dry-run 0|1] [--size t5-xl] [--causal-size llama-8b]
                                                [--budget-s 480]

The report holds both benches: `bench` (T5, --size) and `bench_causal` (a decoder-only LM, --causal-size),
each with its arms, ratios to its own baseline and the targets.
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path


def env_report(path: Path) -> dict:
    """Versions, devices and what the CUDA paths depend on (bf16, SDPA kernels, NCCL)."""
    import torch

    from tools.bench.speed import versions  # imports DeepSpeed (which logs to stdout): only here, not in the report

    report = {"versions": versions(), "platform": platform.platform(), "cpu_count": __import__("os").cpu_count(),
              "cuda_available": torch.cuda.is_available(), "torch_cuda": torch.version.cuda, "devices": []}
    if torch.cuda.is_available():
        report.update(cudnn=torch.backends.cudnn.version(), bf16_supported=torch.cuda.is_bf16_supported(),
                      nccl=".".join(map(str, torch.cuda.nccl.version())),
                      flash_sdp=torch.backends.cuda.flash_sdp_enabled(),
                      mem_efficient_sdp=torch.backends.cuda.mem_efficient_sdp_enabled())
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            report["devices"].append({"index": i, "name": p.name, "memory_bytes": p.total_memory,
                                      "capability": f"{p.major}.{p.minor}", "multiprocessors": p.multi_processor_count})
    if shutil.which("nvidia-smi"):
        smi = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=30)
        report["nvidia_smi"] = smi.stdout.splitlines()
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "nvidia_smi"}, indent=1))
    return report


def train_ds_config(path: Path) -> dict:
    """The default run's ds_config (whatever RunConfig names today) with bf16 on."""
    from trainer.config import RunConfig
    from trainer.paths import REPO_ROOT
    from trainer.runtime.ds_config import load_ds_config

    source = RunConfig().ds_config
    ds = load_ds_config(str(REPO_ROOT / source))
    ds["bf16"] = {**ds.get("bf16", {}), "enabled": True}
    path.write_text(json.dumps(ds, indent=2) + "\n")
    print(f"{path}: {source} with bf16.enabled=true")
    return ds


def tests_summary(xml: Path) -> dict:
    if not xml.exists():
        return {"status": "no junit file"}
    suite = ET.parse(xml).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    cases = []
    for case in suite.iter("testcase"):
        outcome = next((child.tag for child in case if child.tag in ("failure", "error", "skipped")), "passed")
        message = next((child.get("message", "") for child in case if child.tag in ("failure", "error", "skipped")), "")
        cases.append({"test": f"{case.get('classname')}::{case.get('name')}", "outcome": outcome,
                      "seconds": float(case.get("time", 0)), "message": message[:300]})
    return {**counts, "passed": counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"],
            "cases": cases}


def train_summary(run_dir: Path) -> dict:
    metrics = run_dir / "metrics.jsonl"
    if not metrics.exists():
        return {"status": "no metrics.jsonl"}
    events = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    train = [e for e in events if e.get("event") == "train"]
    evals = [e for e in events if e.get("event") == "eval"]
    info = json.loads((run_dir / "run_info.json").read_text()) if (run_dir / "run_info.json").exists() else {}
    out = {"steps": train[-1]["step"] if train else 0, "first_loss": train[0]["loss"] if train else None,
           "last_loss": train[-1]["loss"] if train else None, "elapsed_s": train[-1].get("elapsed_s") if train else None,
           "backbone_dtype": info.get("backbone_dtype"), "world_size": info.get("world_size"),
           "adapter_written": (run_dir / "adapter" / "adapter.safetensors").exists()}
    if evals:
        out["eval"] = {k: v for k, v in evals[-1].items() if "/" in k or k == "step"}
    return out


BENCH_KEYS = ("status", "samples_per_s", "peak_memory_bytes", "mfu", "step_time_s", "latency_s_per_example",
              "backbone_dtype", "world_size", "ratios", "error", "warmup_step_s_rank0", "trainable_params",
              "inference_flops_per_example", "train_flops_per_example")


def bench_summary(path: Path) -> dict:
    if not path.exists():
        return {"status": "no bench.json"}
    bench = json.loads(path.read_text())
    return {"size": bench["size"], "device": bench["device"], "matmul_peak_flops": bench.get("matmul_peak_flops"),
            "baseline": bench["baseline"], "command": bench["command"], "versions": bench["versions"],
            "arms": {name: {k: arm.get(k) for k in BENCH_KEYS if k in arm} for name, arm in bench["arms"].items()},
            "targets": bench["targets"]}


def report(out: Path, dry_run: bool, size: str, causal_size: str, budget_s: int) -> int:
    raw = out / "raw"
    steps = [json.loads(line) for line in (raw / "steps.jsonl").read_text().splitlines() if line.strip()]
    env = json.loads((raw / "env.json").read_text()) if (raw / "env.json").exists() else {}
    result = {"dry_run": dry_run, "size": "tiny" if dry_run else size,
              "causal_size": "tiny-causal" if dry_run else causal_size, "budget_s": budget_s,
              "total_s": sum(s.get("seconds", 0) for s in steps), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "steps": steps, "env": {k: v for k, v in env.items() if k != "nvidia_smi"},
              "install": (raw / "install.log").read_text().strip().splitlines() if (raw / "install.log").exists() else [],
              "tests": tests_summary(raw / "tests.xml"), "train": train_summary(raw / "train"),
              "bench": bench_summary(raw / "bench" / "bench.json"),
              "bench_causal": bench_summary(raw / "bench_causal" / "bench.json")}
    (out / "gpu_check.json").write_text(json.dumps(result, indent=2) + "\n")
    print_table(result)
    return 0 if all(s["status"] == "ok" for s in steps) else 1


def print_table(r: dict) -> None:
    env, devices = r["env"], r["env"].get("devices") or [{"name": "no CUDA device"}]
    v = env.get("versions", {})
    print(f"\n# gpu_check{' --dry-run' if r['dry_run'] else ''} | {devices[0]['name']} x {len(env.get('devices', []))} | "
          f"python {v.get('python')} torch {v.get('torch')} (CUDA {env.get('torch_cuda')}) transformers "
          f"{v.get('transformers')} deepspeed {v.get('deepspeed')} peft {v.get('peft')} | {r['total_s']} s of {r['budget_s']}")
    print("\nstep         status   s     detail")
    t, tr = r["tests"], r["train"]
    details = {
        "install": (r["install"] or [""])[-1][:90],
        "env": f"bf16 {env.get('bf16_supported')}, NCCL {env.get('nccl')}, flash SDPA {env.get('flash_sdp')}",
        "tests": (f"{t.get('passed')} passed, {t.get('failures', 0) + t.get('errors', 0)} failed, "
                  f"{t.get('skipped')} skipped of {t.get('tests')}") if "tests" in t else t.get("status", ""),
        "train": (f"{tr.get('steps')} steps, loss {_f(tr.get('first_loss'))} -> {_f(tr.get('last_loss'))}, "
                  f"{tr.get('backbone_dtype')} backbone, world {tr.get('world_size')}, {tr.get('elapsed_s')} s"
                  + (f", eval {tr['eval']}" if tr.get("eval") else "")) if "steps" in tr else tr.get("status", ""),
        "bench": _arms_ok(r["bench"]), "bench_causal": _arms_ok(r["bench_causal"])}
    for s in r["steps"]:
        print(f"{s['step']:<12} {s['status']:<8} {s.get('seconds', 0):<5} {details.get(s['step'], '')}")
    failed = [c for c in t.get("cases", []) if c["outcome"] in ("failure", "error")]
    for c in failed:
        print(f"  FAILED {c['test']}: {c['message'][:150]}")
    for b in (r["bench"], r["bench_causal"]):
        if "arms" in b:
            print_bench(b)


def _arms_ok(b: dict) -> str:
    if "arms" not in b:
        return b.get("status", "")
    return f"{b['size']}, {sum(a.get('status') == 'ok' for a in b['arms'].values())}/{len(b['arms'])} arms ok"


def print_bench(b: dict) -> None:
    """One bench's rows (samples/s, peak memory, MFU, ratios to its baseline) and its targets."""
    mib = 2**20
    print(f"\nbench {b['size']} | {b['device'].get('name')} | x = ratio to {b['baseline']}")
    print(f"{'arm':<24} {'status':<7} {'samples/s':>9} {'x':>5} {'peak MiB':>9} {'x':>5} {'MFU':>6}")
    for name, a in b["arms"].items():
        if a.get("status") != "ok":
            print(f"{name:<24} {a.get('status', '?'):<7} {str(a.get('error', ''))[:90]}")
            continue
        q = a.get("ratios", {})
        mfu = "n/a" if a.get("mfu") is None else f"{100 * a['mfu']:.1f}%"
        print(f"{name:<24} {'ok':<7} {a['samples_per_s']:>9.2f} {_x(q.get('samples_per_s')):>5} "
              f"{a['peak_memory_bytes'] / mib:>9.0f} {_x(q.get('peak_memory')):>5} {mfu:>6}")
    print("\ntargets (the goals were set for T5-XL on an H100-class GPU):")
    for h in b["targets"]:
        value = "n/a" if h["value"] is None else f"{h['value']:.3f}"
        print(f"  {h['target']:<36} {value:>8}  goal {h['goal']:<7} {({None: 'n/a', True: 'met', False: 'NOT met'})[h['met']]}")


def _f(x) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def _x(x) -> str:
    return "-" if x is None else f"{x:.2f}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("env").add_argument("path", type=Path)
    sub.add_parser("train-ds-config").add_argument("path", type=Path)
    rep = sub.add_parser("report")
    rep.add_argument("out", type=Path)
    rep.add_argument("--dry-run", type=int, default=0)
    rep.add_argument("--size", default="t5-xl")
    rep.add_argument("--causal-size", default="llama-8b")
    rep.add_argument("--budget-s", type=int, default=480)
    args = p.parse_args(argv)
    if args.cmd == "env":
        env_report(args.path)
        return 0
    if args.cmd == "train-ds-config":
        train_ds_config(args.path)
        return 0
    return report(args.out, bool(args.dry_run), args.size, args.causal_size, args.budget_s)


if __name__ == "__main__":
    sys.exit(main())
