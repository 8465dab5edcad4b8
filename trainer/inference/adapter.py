"""The exported SMoP adapter: a small directory that loads on one device, with no DeepSpeed.

    adapter/
      adapter.safetensors   prompts (k, l, d), router.proj.weight (k, d) and, for a centred router,
                            router.center (d,), fp32
      adapter_config.json   method, k, l, d, routing, top_k, noise_scale, ..., router_input, backbone name and
                            config hash,
                            tokenizer, task
      tokenizer/            only when the run trained its own tokenizer (the 'tiny' backbone)

Loading checks the adapter against the backbone it is about to run on (same d_model, same config hash), so a
prompt bank trained on one T5 is never silently prepended to another. Tensors go through safetensors only:
nothing in an adapter directory is unpickled.
"""
from __future__ import annotations

import hashlib
import json
import types
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as save_safetensors

from trainer.config import PromptConfig
from trainer.methods.registry import build_method, registered
from trainer.methods.smop import SMoP

FORMAT_VERSION = 1
WEIGHTS, CONFIG = "adapter.safetensors", "adapter_config.json"
# Keys of a backbone config that do not change what the network computes at inference, or that differ
# between a freshly built config and the same config saved and reloaded (version stamps, dtype, dropout,
# which the trainer may override, output switches).
VOLATILE_KEYS = {"transformers_version", "dtype", "torch_dtype", "architectures", "dropout_rate", "attention_dropout",
                 "classifier_dropout", "use_cache", "output_attentions", "output_hidden_states", "return_dict",
                 "id2label", "label2id", "problem_type"}
# The SMoP constructor arguments an adapter records; load_adapter rebuilds the module from exactly these.
SMOP_KEYS = ("num_prompts", "prompt_length", "d_model", "routing", "top_k", "noise_scale", "gumbel_temperature",
             "balance_coef")


def config_hash(backbone_config) -> str:
    """sha256 (first 16 hex digits) of a backbone config's to_dict() minus volatile and private keys."""
    tree = backbone_config.to_dict() if hasattr(backbone_config, "to_dict") else dict(backbone_config)
    kept = {k: v for k, v in tree.items() if k not in VOLATILE_KEYS and not k.startswith("_")}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:16]


def adapter_meta(cfg, backbone_config) -> dict:
    """The adapter_config.json fields that come from a run config (`RunConfig`) and its backbone."""
    return {"method": cfg.prompt.method, "task": cfg.data.task, "chat_template": cfg.data.chat_template,
            "backbone": {"name_or_path": cfg.model.name_or_path, "config_hash": config_hash(backbone_config),
                         "model_type": getattr(backbone_config, "model_type", None), "seed": cfg.seed},
            "tokenizer": cfg.model.tokenizer or ("" if cfg.model.name_or_path == "tiny" else cfg.model.name_or_path)}


def save_adapter(directory, smop: SMoP, meta: dict, tokenizer=None) -> Path:
    """Write `smop` (fp32) and its config into `directory`; returns the directory.

    meta: method, task, backbone {name_or_path, config_hash, ...}, tokenizer (see `adapter_meta`).
    tokenizer: saved into directory/tokenizer when meta["tokenizer"] is empty, i.e. the run trained its own.
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {name: t.detach().to("cpu", torch.float32).contiguous() for name, t in smop.state_dict().items()}
    router = smop.router
    config = {"format_version": FORMAT_VERSION, **meta,
              "num_prompts": smop.num_prompts, "prompt_length": smop.prompt_length, "d_model": smop.d_model,
              "routing": router.variant if router is not None else "none",
              "top_k": router.top_k if router is not None else 1,
              "noise_scale": router.noise_scale if router is not None else 0.0,
              "gumbel_temperature": router.temperature if router is not None else 1.0,
              "balance_coef": router.balance_coef if router is not None else 0.0,
              "router_input": "centered" if router is not None and router.center is not None else "raw"}
    if not meta.get("tokenizer") and tokenizer is not None:
        tokenizer.save_pretrained(str(out / "tokenizer"))
        config["tokenizer"] = "tokenizer"  # relative to the adapter directory
    # Weights first, config last: a directory with a config always has its weights. Serialised in memory and
    # written by Python, so a full disk is an OSError with its errno (trainer/runtime/storage.py).
    (out / WEIGHTS).write_bytes(save_safetensors(tensors, metadata={"format": "smop-adapter"}))
    (out / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return out


def read_adapter_config(directory) -> dict:
    """adapter_config.json of `directory`, with the keys load_adapter needs checked."""
    path = Path(directory) / CONFIG
    try:
        config = json.loads(path.read_text())
    except OSError as e:
        raise ValueError(f"adapter '{directory}': cannot read {CONFIG} ({e.strerror})") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    missing = [k for k in (*SMOP_KEYS, "backbone") if k not in config]
    if missing:
        raise ValueError(f"{path}: missing key(s) {', '.join(missing)}")
    return config


def load_adapter(directory, backbone_config=None) -> SMoP:
    """An SMoP module (eval mode, fp32, CPU) from an adapter directory.

    backbone_config: the config of the backbone the adapter will run on; when given, its d_model and config
    hash must match the adapter's, else ValueError naming the directory and what differs.
    """
    config = read_adapter_config(directory)
    if backbone_config is not None:
        check_backbone(directory, config, backbone_config)
    path = Path(directory) / WEIGHTS
    try:
        tensors = load_file(str(path))
    except (OSError, SafetensorError) as e:
        raise ValueError(f"adapter '{directory}': cannot read {WEIGHTS} ({e})".splitlines()[0]) from None
    smop = build_method(adapter_prompt(directory, config), types.SimpleNamespace(hidden_size=config["d_model"]))
    expected = {name: tuple(t.shape) for name, t in smop.state_dict().items()}
    found = {name: tuple(t.shape) for name, t in tensors.items()}
    if expected != found:
        raise ValueError(f"adapter '{directory}': {WEIGHTS} holds {found}, but {CONFIG} describes {expected}")
    for name, t in tensors.items():
        if not torch.isfinite(t).all():
            bad = int((~torch.isfinite(t)).sum())
            raise ValueError(f"adapter '{directory}': {name} has {bad} non-finite value(s) (nan/inf); "
                             "the adapter is corrupt or its training diverged")
    smop.load_state_dict({name: t.float() for name, t in tensors.items()})
    return smop.eval()


def adapter_prompt(directory, config: dict) -> PromptConfig:
    """The prompt config an adapter was trained with, as far as it shapes the module: build_method's input."""
    method = config.get("method", "smop")
    exporting = [name for name, spec in registered().items() if spec.prompt_bank]
    if method not in exporting:
        raise ValueError(f"adapter '{directory}': method '{method}' is not one that exports adapters "
                         f"({', '.join(exporting)})")
    return PromptConfig(method=method, num_prompts=config["num_prompts"], prompt_length=config["prompt_length"],
                        routing=config["routing"] if config["routing"] != "none" else "smop",
                        top_k=config["top_k"], noise_scale=config["noise_scale"],
                        gumbel_temperature=config["gumbel_temperature"], balance_coef=config["balance_coef"],
                        router_input=config.get("router_input", "raw"))  # adapters before centring: raw


def check_backbone(directory, config: dict, backbone_config) -> None:
    """Raise ValueError (one line: directory and the difference) unless the backbone matches the adapter."""
    want_d, have_d = config["d_model"], getattr(backbone_config, "hidden_size", None)
    if want_d != have_d:
        raise ValueError(f"adapter '{directory}' was trained for d_model={want_d} "
                         f"({config['backbone'].get('name_or_path')}), but the backbone has d_model={have_d}")
    want, have = config["backbone"].get("config_hash"), config_hash(backbone_config)
    if want != have:
        raise ValueError(f"adapter '{directory}' was trained on backbone "
                         f"'{config['backbone'].get('name_or_path')}' with config hash {want}, but this backbone's "
                         f"config hashes to {have} (different layers, vocabulary or feed-forward)")


def tokenizer_path(directory, config: dict) -> str:
    """The tokenizer to use with an adapter: its own copy, or the name/path it records."""
    name = config.get("tokenizer", "")
    if name and (Path(directory) / name).is_dir():
        return str(Path(directory) / name)
    return name
