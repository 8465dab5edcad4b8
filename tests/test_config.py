"""The typed config: presets, overrides, validation, and every shipped preset and ds_config."""
from pathlib import Path

import pytest

from trainer.config import REPO_ROOT, Routing, field_docs, load_config
from trainer.ds_config import load_ds_config, merge_batch, resolve_batch


def test_overrides_are_typed():
    cfg = load_config(None, ["train.lr=0.5", "prompt.routing=topk", "model.dropout=null", "train.max_steps=7",
                             "model.tiny.d_model=32"])
    assert cfg.train.lr == 0.5 and cfg.prompt.routing == Routing.TOPK and cfg.model.dropout is None
    assert cfg.train.max_steps == 7 and cfg.model.tiny.d_model == 32


@pytest.mark.parametrize("override, message", [
    ("train.lrr=1", "unknown config key 'train.lrr'"),
    ("nope.x=1", "unknown config key 'nope.x'"),
    ("train.max_steps=abc", "train.max_steps: expected int"),
    ("train.max_steps=1.5", "train.max_steps: expected int"),
    ("prompt.routing=foo", "'foo' is not one of smop, top1"),
    ("model=1", "'model' is a section"),
    ("train.lr", "is not key=value"),
    ("prompt.method=prompt_tuning", "prompt_tuning uses one prompt"),
    ("prompt.top_k=9", "prompt.top_k=9"),
    ("data.max_source_length=5", "data.max_source_length=5"),
    ("train.micro_batch_size=0", "train.micro_batch_size=0"),
    ("prompt.init=text", "prompt.init_text: required"),
])
def test_bad_overrides_name_the_key(override, message):
    routing = ["prompt.routing=topk"] if "top_k" in override else []
    with pytest.raises(ValueError, match=message):
        load_config(None, routing + [override])


def test_preset_then_overrides(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("train:\n  lr: 0.1\n  max_steps: 9\nprompt:\n  num_prompts: 8\n")
    cfg = load_config(str(preset), ["train.lr=0.2"])
    assert (cfg.train.lr, cfg.train.max_steps, cfg.prompt.num_prompts) == (0.2, 9, 8)
    preset.write_text("train:\n  lrr: 0.1\n")
    with pytest.raises(ValueError, match=f"{preset}: unknown config key 'train.lrr'"):
        load_config(str(preset), [])


def test_batch_arithmetic_has_one_owner():
    cfg = load_config(None, ["train.micro_batch_size=4", "train.global_batch_size=32"])
    assert resolve_batch(cfg.train, 2) == (4, 4, 32)
    assert resolve_batch(load_config(None, ["train.micro_batch_size=4", "train.grad_accum_steps=3"]).train, 2) == (4, 3, 24)
    with pytest.raises(ValueError, match="not a multiple"):
        resolve_batch(load_config(None, ["train.micro_batch_size=3", "train.global_batch_size=32"]).train, 2)
    merged = merge_batch({"zero_optimization": {"stage": 3}}, 4, 4, 32)
    assert (merged["train_micro_batch_size_per_gpu"], merged["gradient_accumulation_steps"],
            merged["train_batch_size"]) == (4, 4, 32)
    with pytest.raises(ValueError, match="train_batch_size=64 contradicts"):
        merge_batch({"train_batch_size": 64}, 4, 4, 32)


def test_every_field_is_documented():
    rows = field_docs()
    assert len(rows) > 40
    assert [key for key, doc, _ in rows if not doc] == []


@pytest.mark.parametrize("path", sorted((REPO_ROOT / "configs").rglob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_preset_validates(path):
    first = path.read_text().splitlines()[0]
    assert first.startswith("#"), f"{path.name} must open with a comment giving its launch command"
    load_config(str(path), [])


@pytest.mark.parametrize("path", sorted((REPO_ROOT / "ds_configs").glob("*.json")), ids=lambda p: p.name)
def test_every_shipped_ds_config_loads_and_merges(path):
    ds = load_ds_config(str(path))
    merge_batch(ds, 8, 1, 16, str(path))
    zero = ds.get("zero_optimization", {})
    if zero.get("stage") == 3:
        assert "stage3_param_persistence_threshold" in zero and "stage3_prefetch_bucket_size" in zero


def test_bad_ds_configs(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"zero_optimization": {"stage": 3,}}')
    with pytest.raises(ValueError, match=r"bad.json:1: not valid JSON"):
        load_ds_config(str(bad))
    bad.write_text('{"zero_optimization": {"stage": 3, "stage3_prefetch_bucket_size": "auto"}}')
    with pytest.raises(ValueError, match="stage3_prefetch_bucket_size is \"auto\""):
        load_ds_config(str(bad))
    bad.write_text('{"fp16": {"enabled": true}}')
    with pytest.raises(ValueError, match="use bf16"):
        load_ds_config(str(bad))
    with pytest.raises(ValueError, match="cannot read"):
        load_ds_config(str(tmp_path / "missing.json"))


def test_readme_documents_every_config_key():
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, str(REPO_ROOT / "tools/config_docs.py"), "--check"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout
