"""Where the shipped files are, what a run's files of trained state are called, and the one rule for
"local path or hub name".

A leaf module (it imports nothing of the package), so the config, the data readers and the backbone
loader can all use it without importing one another.
"""
from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIR = Path(__file__).resolve().parent
EMBEDDED_DATA_DIR = PACKAGE_DIR / "assets" / "data"
SHIPPED_MODELS = {"tiny-pretrained": PACKAGE_DIR / "assets" / "tiny-pretrained",
                  "tiny-pretrained-causal": PACKAGE_DIR / "assets" / "tiny-pretrained-causal"}
"""Backbones that ship with the trainer, by name: a small T5 and a small Llama (tools/assets/pretrain_tiny.py
regenerates each)."""

FINAL_METHOD_FILE = "method_final.safetensors"
"""The trained method's state dict, written beside a finished run's outputs whatever the method."""
OLD_FINAL_METHOD_FILE = "smop_final.safetensors"
"""Its name in runs from before it held any method's state: still read."""


def shipped_path(path: str) -> str:
    """A shipped preset or ds_config (`configs/...`, `ds_configs/...`) from any working directory: as given
    when it exists, else in the checkout, else inside an installed package (`pip install .` carries them)."""
    if Path(path).exists() or Path(path).is_absolute():
        return path
    for root in (REPO_ROOT, PACKAGE_DIR):
        if (root / path).exists():
            return str(root / path)
    return path  # the reader names it in its error


def model_location(name: str, key: str = "model.name_or_path") -> str:
    """Where from_pretrained looks for model (or tokenizer) `name`: a shipped model's folder, a local
    directory, or a hub name ("org/name") as it is.

    The one rule for "local path or hub name": a name that starts with . / ~, has more than one /, or exists
    on disk is a path, and must be a directory. Otherwise it fails here with "`key`: no such directory",
    rather than later as a confusing hub lookup error.
    """
    if name in SHIPPED_MODELS:
        return str(SHIPPED_MODELS[name])
    path = Path(name).expanduser()
    if not (name.startswith((".", "/", "~")) or name.count("/") > 1 or path.exists()):
        return name
    if not path.is_dir():
        raise ValueError(f"{key}: no such directory '{name}'")
    return str(path)
