"""Run a few real training steps in-process and write what the GPU tests and their CPU twins compare.

    python -m tests.probes.step_probe OUT_DIR [--steps N] [--save-backbone F | --load-backbone F] [overrides...]

Builds the run exactly as trainer/main.py does (`read_inputs -> distributed.init -> build_run`) with the
TINY test overrides, then calls `trainer.loop.train_step` N times and writes OUT_DIR/probe.json:
- `losses`: each step's mean token loss (read after the step, outside the recorded region);
- `grads`, `params_before`, `params_after`: step 1's all-reduced, clipped gradients (captured where
  `train_step` hands them to the optimiser) and the trainable parameters around that step;
- `host_reads`: every host read of a device value made inside steps 2..N (step 1 reads the guard's flag on
  purpose: no optimiser state exists yet, see trainer.optim.masked_step), each with the code it came from.
  A read is a Python-level `bool()/item()/tolist()/float()/int()` of a tensor on the run's device (on the
  CPU these stand in for device waits) and, on CUDA, every synchronisation `torch.cuda.set_sync_debug_mode`
  reports, also those made inside C++ kernels' launch code;
- `skipped`: non-finite steps the guard skipped, `optimizer`: what was built (fused AdamW on CUDA).
`--save-backbone`/`--load-backbone` write/read the backbone weights and the initial trainable parameters
(fp32 safetensors), so a CUDA bf16 run starts from exactly the state of a CPU fp32 run (bf16 = the fp32
weights rounded).
"""
from __future__ import annotations

import argparse
import json
import sys
import traceback
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

import torch
from safetensors.torch import load_file, save_file

from tests.launch import TINY

TORCH_DIR = Path(torch.__file__).resolve().parent
READS = ("__bool__", "item", "tolist", "__float__", "__int__")


def origin(stack: list[traceback.FrameSummary]) -> dict:
    """Who made a host read: the innermost frame outside torch (torch's own Python code, such as
    clip_grad_norm_, reads on behalf of its caller) and outside this probe and the warnings machinery.
    `via`: the torch file the read happened in, if any (e.g. optim/adamw.py)."""
    via = None
    for frame in reversed(stack):
        if frame.filename.startswith("<"):  # <frozen ...>, <string>: code with no file
            return {"origin": "other", "where": f"{frame.filename}:{frame.lineno} {frame.name}", "via": via}
        # Paths compared as paths: a virtual environment named like the checkout plus a suffix (X-venv beside
        # X) starts with the same characters but is not inside it.
        path = Path(frame.filename).resolve()
        if path.is_relative_to(TORCH_DIR):
            via = via or str(path.relative_to(TORCH_DIR))
            continue
        if path == Path(__file__).resolve() or path.name == "warnings.py":
            continue
        where = f"{path.relative_to(REPO) if path.is_relative_to(REPO) else path}:{frame.lineno} {frame.name}"
        if path.is_relative_to(REPO / "trainer"):
            return {"origin": "trainer", "where": where, "via": via}
        package = next((p for p in ("transformers", "deepspeed", "accelerate") if p in path.parts), "other")
        return {"origin": package, "where": where, "via": via}
    return {"origin": "torch", "where": "torch internals", "via": via}


class HostReads:
    """Records host reads of device values while `active` (see the module docstring)."""

    def __init__(self, device: torch.device):
        self.device, self.active, self.found = device, False, []
        self._real = {name: getattr(torch.Tensor, name) for name in READS}

    def install(self) -> None:
        for name, real in self._real.items():
            def patched(t, *args, _real=real, _name=name):
                if self.active and t.device == self.device:
                    self._record(_name)
                return _real(t, *args)
            setattr(torch.Tensor, name, patched)
        if self.device.type == "cuda":
            torch.cuda.set_sync_debug_mode("warn")
            warnings.simplefilter("always")
            real_show = warnings.showwarning

            def show(message, category, filename, lineno, file=None, line=None):
                if self.active and "synchroniz" in str(message):
                    self._record(f"cuda sync: {str(message).splitlines()[0][:120]}")
                else:
                    real_show(message, category, filename, lineno, file, line)
            warnings.showwarning = show

    def uninstall(self) -> None:
        for name, real in self._real.items():
            setattr(torch.Tensor, name, real)
        if self.device.type == "cuda":
            torch.cuda.set_sync_debug_mode("default")

    def _record(self, kind: str) -> None:
        self.active = False  # our own bookkeeping must not record itself
        try:
            self.found.append({"kind": kind, **origin(traceback.extract_stack()[:-2])})
        finally:
            self.active = True


# --- used by the tests that start this probe --------------------------------------------------------------

def write_ds_config(directory: Path, stage: int, bf16: bool) -> Path:
    """A minimal ds_config of ZeRO `stage` (below 3: the replicated path) in bf16 or fp32."""
    zero = {"stage": stage, **({"stage3_param_persistence_threshold": 0} if stage == 3 else {})}
    path = Path(directory) / f"ds-stage{stage}-{'bf16' if bf16 else 'fp32'}.json"
    path.write_text(json.dumps({"zero_optimization": zero, "bf16": {"enabled": bf16}, "gradient_clipping": 0.0,
                                "steps_per_print": 10**9}))
    return path


def run_probe(out: Path, *args, cpu: bool = False) -> dict:
    """This probe in its own process; cpu=True hides any GPU from it. Returns probe.json."""
    import os
    import subprocess

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if cpu:
        env.update(CUDA_VISIBLE_DEVICES="", DS_ACCELERATOR="cpu")
    cmd = [sys.executable, "-m", "tests.probes.step_probe", str(out), *map(str, args)]  # imports tests.launch
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads((Path(out) / "probe.json").read_text())


def step_difference(ref: dict, other: dict) -> dict:
    """How far `other`'s first step is from `ref`'s: relative loss and gradient errors, update cosine."""
    def flat(values):
        return torch.cat([torch.tensor(v, dtype=torch.float64) for v in values])

    g_ref, g = flat(ref["grads"]), flat(other["grads"])
    u_ref = flat(ref["params_after"]) - flat(ref["params_before"])
    u = flat(other["params_after"]) - flat(other["params_before"])
    return {"loss_rel": abs(other["losses"][0] - ref["losses"][0]) / abs(ref["losses"][0]),
            "grad_rel": float((g - g_ref).norm() / g_ref.norm()),
            "update_cos": float(torch.nn.functional.cosine_similarity(u_ref, u, dim=0)),
            "same_start": torch.equal(flat(ref["params_before"]), flat(other["params_before"]))}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--save-backbone")
    p.add_argument("--load-backbone")
    p.add_argument("--generate", type=int, default=0, help="also greedily generate this many tokens for one "
                   "micro batch with synced_gpus on and off")
    args, overrides = p.parse_known_args()

    from trainer import loop
    from trainer.runtime import distributed, update
    from trainer.main import build_run, read_inputs

    out = Path(args.out)
    inputs = read_inputs(None, TINY + [f"output_dir={out}", "train.log_every=1000", "checkpoint.every=0",
                                       *overrides])
    dist = distributed.init()
    run = build_run(inputs, dist)
    backbone = run.model.backbone
    params = list(backbone.parameters())
    with distributed.gathered(params, modifier_rank=0):
        if args.load_backbone:
            weights = load_file(args.load_backbone)
            with torch.no_grad():
                for name, t in backbone.state_dict().items():
                    t.copy_(weights[name].to(t.dtype))
                for name, t in run.model.method.state_dict().items():
                    t.copy_(weights["smop." + name].to(t.dtype))
        if args.save_backbone and dist.is_main:
            # clone: tied weights (shared, embed_tokens, lm_head) share storage, which safetensors refuses
            # The trainable part too: its init depends on how much of the global RNG the backbone's
            # construction drew, which differs between ZeRO-3 (zero.Init) and a replicated build.
            state = {**backbone.state_dict(), **{"smop." + k: v for k, v in run.model.method.state_dict().items()}}
            save_file({k: v.detach().float().cpu().clone() for k, v in state.items()}, args.save_backbone)
    loop.reset_stats(run)

    captured = {}
    real_masked_step = update.masked_step  # the replicated update path's step (trainer/runtime/update.py)

    def capturing_step(optimizer, ps, ok):
        if run.state.step == 0:
            captured["grads"] = [q.grad.detach().float().cpu().flatten().tolist() for q in ps]
        return real_masked_step(optimizer, ps, ok)

    update.masked_step = capturing_step
    reads = HostReads(dist.device)
    reads.install()
    before = [q.detach().float().cpu().flatten().tolist() for q in run.state.trainable]
    losses, after = [], None
    for _ in range(args.steps):
        reads.active = run.state.step > 0
        loop.train_step(run)
        reads.active = False
        run.state.step += 1
        if run.state.step == 1:
            after = [q.detach().float().cpu().flatten().tolist() for q in run.state.trainable]
        s = run.stats
        losses.append(float(s["loss_sum"] / s["tokens"]) if float(s["tokens"]) > 0 else float("nan"))
        loop.reset_stats(run)
        run.state.guard.poll(run.state.step + 1)
    reads.uninstall()
    generated = generate_both(run, args.generate) if args.generate else None
    if dist.is_main:
        opt = run.state.optimizer
        (out / "probe.json").write_text(json.dumps({
            "device": str(dist.device), "backbone_dtype": str(params[0].dtype), "losses": losses,
            "grads": captured.get("grads"), "params_before": before, "params_after": after,
            "host_reads": reads.found, "skipped": run.state.guard.skipped, "generated": generated,
            "trainable_dtypes": sorted({str(q.dtype) for q in run.state.trainable}),
            "compiled_blocks": sum(getattr(b.forward, "__name__", "") == "compiled_forward"
                                   for b in run.model.family.blocks(backbone)),
            "optimizer": {"type": type(opt).__name__, "fused": bool(opt.defaults.get("fused")),
                          "state_devices": sorted({str(v.device) for st in opt.state.values() for v in st.values()
                                                   if torch.is_tensor(v)})}}, indent=1))
    run.monitor.close()
    distributed.destroy()


def generate_both(run, tokens: int) -> dict:
    """Greedy ids of one micro batch with synced_gpus on and off (trainer.models.prompted.PromptedModel.generate)."""
    from trainer.data.batch import collate

    batch = collate(run.data.eval, list(range(run.state.layout.micro)), run.tokenizer.pad_token_id)
    batch = {k: v.to(run.dist.device) for k, v in batch.items()}
    run.model.train(False)
    return {name: run.model.generate(batch, tokens, synced_gpus=synced)[0].cpu().tolist()
            for name, synced in (("synced", True), ("plain", False))}


if __name__ == "__main__":
    main()
