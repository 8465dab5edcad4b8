"""Write the SMoP adapter of a finished run (or of one of its checkpoints) as a small directory.

    smop-export --run_dir runs/tiny [--out runs/tiny/adapter] [--checkpoint PATH]

Reads config.yaml, the tokenizer and method_final.safetensors (smop_final.safetensors in runs from before the
rename) from the run directory (or, with --checkpoint,
a safetensors file holding the same keys, `prompts` and `router.proj.weight`, or a checkpoint folder with one
such file). Writes adapter.safetensors and adapter_config.json (see trainer/inference/adapter.py). No DeepSpeed, no
process group, no backbone weights are loaded: only the backbone's config, to record its hash.
Bad input: one line on stderr, exit code 2.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from trainer.cli.run_files import backbone_config, read_run, run_tokenizer
from trainer.inference.adapter import adapter_meta, save_adapter
from trainer.methods.registry import build_method, get_method
from trainer.paths import FINAL_METHOD_FILE, OLD_FINAL_METHOD_FILE


def find_weights(run_dir: Path, checkpoint: str | None) -> Path:
    """The safetensors file to export: the run's final method state, or the one in/at `checkpoint`."""
    if checkpoint is None:
        path = run_dir / FINAL_METHOD_FILE
        if not path.is_file() and (run_dir / OLD_FINAL_METHOD_FILE).is_file():
            path = run_dir / OLD_FINAL_METHOD_FILE
        if not path.is_file():
            raise ValueError(f"run_dir '{run_dir}': no {FINAL_METHOD_FILE} (did the run finish? "
                             "pass --checkpoint for an unfinished one)")
        return path
    path = Path(checkpoint)
    if path.is_dir():
        # A checkpoint folder: the one safetensors file in it that holds SMoP's keys.
        found = [p for p in sorted(path.glob("*.safetensors")) if "prompts" in _keys(p)]
        if len(found) != 1:
            raise ValueError(f"checkpoint '{path}': expected one *.safetensors file with a 'prompts' tensor, "
                             f"found {len(found)}")
        return found[0]
    if not path.is_file():
        raise ValueError(f"checkpoint '{path}': no such file or directory")
    return path


def _keys(path: Path) -> set[str]:
    try:
        return set(load_file(str(path)))
    except (OSError, SafetensorError):
        return set()


def export(run_dir, out=None, checkpoint: str | None = None) -> Path:
    """Write the adapter of `run_dir` into `out` (default run_dir/adapter); returns `out`."""
    run_dir = Path(run_dir)
    cfg = read_run(run_dir)
    tokenizer = run_tokenizer(run_dir, cfg)
    config = backbone_config(cfg, len(tokenizer))
    if not get_method(cfg.prompt.method).prompt_bank:
        raise ValueError(f"run_dir '{run_dir}': prompt.method={cfg.prompt.method} exports no adapter "
                         f"(its trained state is {FINAL_METHOD_FILE})")
    smop = build_method(cfg.prompt, config)
    path = find_weights(run_dir, checkpoint)
    try:
        tensors = load_file(str(path))
    except (OSError, SafetensorError) as e:
        raise ValueError(f"{path}: cannot read ({e})".splitlines()[0]) from None
    expected = {name: tuple(t.shape) for name, t in smop.state_dict().items()}
    found = {name: tuple(t.shape) for name, t in tensors.items() if name in expected}
    if found != expected:
        raise ValueError(f"{path}: holds {found}, but the run's config.yaml describes {expected}")
    for name, t in tensors.items():
        if name in expected and not torch.isfinite(t).all():
            raise ValueError(f"{path}: {name} has non-finite values; refusing to export a diverged adapter")
    smop.load_state_dict({name: tensors[name].float() for name in expected})
    return save_adapter(out or run_dir / "adapter", smop, adapter_meta(cfg, config), tokenizer)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run_dir", required=True, help="a finished training run's output_dir")
    parser.add_argument("--out", help="adapter directory to write (default: RUN_DIR/adapter)")
    parser.add_argument("--checkpoint", help="a safetensors file (or a folder with one) holding the SMoP keys")
    args = parser.parse_args(argv)
    try:
        out = export(args.run_dir, args.out, args.checkpoint)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
