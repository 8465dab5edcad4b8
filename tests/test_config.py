"""The typed config: presets, overrides, validation, and every shipped preset and ds_config."""
import json
import re

import pytest

from tools.docs.config_docs import field_docs
from trainer.cli.run_files import load_backbone
from trainer.config import OptimizerName, load_config
from trainer.paths import REPO_ROOT, SHIPPED_MODELS, model_location
from trainer.data.tokenizer import load_tokenizer
from trainer.methods.router import RouterInit, RouterInput, RoutingVariant
from trainer.perf.shapes import T5_SHAPES
from trainer.runtime.ds_config import BATCH_KEYS, BatchLayout, load_ds_config, merge_batch, resolve_batch


def test_overrides_are_typed():
    cfg = load_config(None, ["train.lr=0.5", "prompt.routing=topk", "model.dropout=null", "train.max_steps=7",
                             "model.tiny.d_model=32"])
    assert cfg.train.lr == 0.5 and cfg.prompt.routing == RoutingVariant.TOPK and cfg.model.dropout is None
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
    ("hang_timeout_s=1800", r"hang_timeout_s=1800.0: must lie in \[0, collective_timeout_s=1800.0\)"),
    ("monitor.straggler_factor=1", "monitor.straggler_factor=1.0: must exceed 1"),
    ("monitor.straggler_patience=0", "monitor.straggler_patience=0: must be at least 1"),
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
    layout = resolve_batch(cfg.train, 2)
    assert (layout, layout.global_batch) == (BatchLayout(4, 4, 2), 32)
    layout = resolve_batch(load_config(None, ["train.micro_batch_size=4", "train.grad_accum_steps=3"]).train, 2)
    assert (layout, layout.global_batch) == (BatchLayout(4, 3, 2), 24)
    with pytest.raises(ValueError, match="not a multiple"):
        resolve_batch(load_config(None, ["train.micro_batch_size=3", "train.global_batch_size=32"]).train, 2)
    merged = merge_batch({"zero_optimization": {"stage": 3}}, BatchLayout(4, 4, 2))
    assert (merged["train_micro_batch_size_per_gpu"], merged["gradient_accumulation_steps"],
            merged["train_batch_size"]) == (4, 4, 32)
    with pytest.raises(ValueError, match="train_batch_size=64 contradicts"):
        merge_batch({"train_batch_size": 64}, BatchLayout(4, 4, 2))


def test_every_field_is_documented():
    rows = field_docs()
    assert len(rows) > 40
    assert [key for key, doc, _ in rows if not doc] == []


def deepspeed_accepts(ds: dict, path) -> None:
    """DeepSpeed's own parser: unknown keys are errors (pydantic, extra=forbid) and, with no process group,
    train_batch_size must equal micro x accumulation x 1."""
    from deepspeed.runtime.config import DeepSpeedConfig

    DeepSpeedConfig(merge_batch(ds, BatchLayout(4, 2, 1), str(path)))


@pytest.mark.parametrize("path", sorted((REPO_ROOT / "configs").rglob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_preset_validates(path):
    first = path.read_text().splitlines()[0]
    assert first.startswith("#"), f"{path.name} must open with a comment giving its launch command"
    cfg = load_config(str(path), [])
    ds = load_ds_config(str(REPO_ROOT / cfg.ds_config))
    for world in (1, 2, 4, 8, 16):
        if not cfg.train.global_batch_size or cfg.train.global_batch_size % (cfg.train.micro_batch_size * world) == 0:
            layout = resolve_batch(cfg.train, world)
            assert layout.world == world and layout.micro == cfg.train.micro_batch_size
            merge_batch(ds, layout, cfg.ds_config)
    deepspeed_accepts(ds, path)


# The T5 v1.1 LM-adapted checkpoints each GPU ds_config is sized for (trainer/perf/shapes.py).
T5 = {name.replace("-", "_"): T5_SHAPES[name] for name in ("t5-large", "t5-xl", "t5-xxl")}
DS_CONFIGS = sorted((REPO_ROOT / "ds_configs").glob("*.json"))


def _size(path) -> dict | None:
    return next((shape for name, shape in T5.items() if path.name.startswith(name + "_")), None)


@pytest.mark.parametrize("path", DS_CONFIGS, ids=lambda p: p.name)
def test_every_shipped_ds_config_loads_and_merges(path):
    ds = load_ds_config(str(path))
    assert not set(BATCH_KEYS) & ds.keys(), "batch keys belong to the run config (trainer/runtime/ds_config.py)"
    # The SMoP parameters are trained outside the engine: an engine optimiser or its offload would be unused.
    assert not {"optimizer", "scheduler"} & ds.keys() and "offload_optimizer" not in json.dumps(ds)
    zero = ds.get("zero_optimization", {})
    assert zero.get("reduce_bucket_size", 0) <= 10_000_000, "only KBs of gradients: keep reduce buckets small"
    if zero.get("stage") == 3:
        assert "stage3_param_persistence_threshold" in zero and "stage3_prefetch_bucket_size" in zero
    deepspeed_accepts(ds, path)


@pytest.mark.parametrize("path", [p for p in DS_CONFIGS if _size(p)], ids=lambda p: p.name)
def test_gpu_ds_configs_fit_their_t5(path):
    shape, zero = _size(path), load_ds_config(str(path))["zero_optimization"]
    d = shape.d_model
    embedding, smallest = shape.vocab_size * d, d * shape.inner
    assert embedding > d * shape.d_ff, "the (un)embedding is the largest matrix"
    # One prefetch bucket must hold the largest matrix, or each gather of it is split into several.
    assert zero["stage3_prefetch_bucket_size"] >= embedding
    assert zero["stage3_max_live_parameters"] >= zero["stage3_prefetch_bucket_size"]
    # Small tensors stay whole on every rank: at least a 4 x 5 SMoP prompt bank and a 100-token prompt
    # (prompt tuning), but no backbone matrix (the smallest is one d x heads*d_kv attention projection).
    smop = load_config(str(REPO_ROOT / "configs" / (path.name.split("_zero")[0] + "_smop.yaml")), [])
    prompts = smop.prompt.num_prompts * smop.prompt.prompt_length * d
    assert max(prompts, 100 * d) <= zero["stage3_param_persistence_threshold"] < smallest
    if "xxl" in path.name:
        assert zero["offload_param"]["device"] == "cpu"


def test_zero2_config_is_stage_2_without_stage3_keys():
    zero = load_ds_config(str(REPO_ROOT / "ds_configs" / "zero2_bf16.json"))["zero_optimization"]
    assert zero["stage"] == 2 and not [k for k in zero if k.startswith("stage3_")]


TEMPLATES = sorted(p for p in (REPO_ROOT / "slurm").glob("*.sh") if p.name != "launch.sh")


def _knob(text: str, name: str) -> str:
    found = re.search(rf"^{name}=\$\{{{name}:-(.*?)\}}\s*(#.*)?$", text, re.M)
    assert found, f"{name} must be set as {name}=${{{name}:-default}}"
    return found.group(1).strip('"')


def _sbatch(text: str, option: str) -> str:
    found = re.search(rf"^#SBATCH --{option}=(\S+)", text, re.M)
    assert found, f"#SBATCH --{option}= missing"
    return found.group(1)


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: p.name)
def test_slurm_template_preset_ds_config_and_world_agree(path):
    """Each template's defaults: the preset names the same ds_config, and its global batch divides over
    nodes x GPUs; pre-emption options and the shared launch helper are in place."""
    text = path.read_text()
    nodes, gpus, ranks = (int(_sbatch(text, o)) for o in ("nodes", "gpus-per-node", "ntasks-per-node"))
    assert ranks == gpus, "one rank per GPU"
    preset, ds_path = _knob(text, "PRESET"), _knob(text, "DS_CONFIG")
    cfg = load_config(str(REPO_ROOT / preset), [])
    assert cfg.ds_config == ds_path, f"{preset} uses {cfg.ds_config}, the template passes {ds_path}"
    merge_batch(load_ds_config(str(REPO_ROOT / ds_path)), resolve_batch(cfg.train, nodes * gpus), ds_path)
    for knob in ("RUN_NAME", "OUTPUT_ROOT", "PYTHON", "REPO"):
        _knob(text, knob)
    assert _knob(text, "REQUEUE_EXIT_CODE") == "3"
    assert re.search(r"^#SBATCH --signal=B:USR1@\d+", text, re.M)
    assert re.search(r"^#SBATCH --requeue\b", text, re.M)
    assert _sbatch(text, "open-mode") == "append"
    assert text.rstrip().endswith('source "$REPO/slurm/launch.sh"')
    if "--array" in text:
        lists = [_knob(text, k).split() for k in ("TASKS", "NUM_PROMPTS", "SEEDS")]
        size = len(lists[0]) * len(lists[1]) * len(lists[2])
        assert _sbatch(text, "array").split("%")[0] == f"0-{size - 1}"


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


@pytest.mark.multiprocess
def test_readme_documents_every_config_key():
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "tools.docs.config_docs", "--check"],
                          capture_output=True, text=True, cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stdout


@pytest.mark.parametrize("size", ["large", "xl", "xxl"])
def test_smop_presets_use_adafactor_and_the_default_router(size):
    """The benchmark's verdict (docs/benchmark-accuracy.md): Adafactor beats AdamW for SMoP with the default
    router, so the SMoP presets tune with it; the router itself is the trainer's default."""
    cfg = load_config(str(REPO_ROOT / "configs" / f"t5_{size}_smop.yaml"), [])
    assert (cfg.train.optimizer, cfg.train.lr) == (OptimizerName.ADAFACTOR, 0.3)
    assert (cfg.prompt.router_input, cfg.prompt.router_init, cfg.train.router_lr) == \
           (RouterInput.CENTERED, RouterInit.KMEANS, 0.003)


def test_one_rule_for_local_path_or_hub_name(tmp_path):
    assert model_location("tiny-pretrained") == str(SHIPPED_MODELS["tiny-pretrained"])
    assert model_location("google/t5-xl-lm-adapt") == "google/t5-xl-lm-adapt"  # a hub name passes through
    assert model_location(str(tmp_path)) == str(tmp_path)
    for name in (f"{tmp_path}/nope", "./nope", "~/nope-smop", "org/name/extra"):
        with pytest.raises(ValueError, match=rf"^--backbone: no such directory '{re.escape(name)}'$"):
            model_location(name, "--backbone")
    # The config, the tokenizer loader and the tools' backbone loader all apply it, each naming its own key.
    with pytest.raises(ValueError, match=r"^model.name_or_path: no such directory 'org/name/extra'$"):
        load_config(None, ["model.name_or_path=org/name/extra"])
    with pytest.raises(ValueError, match=r"^model.tokenizer: no such directory 'org/name/extra'$"):
        load_tokenizer("org/name/extra")
    with pytest.raises(ValueError, match=r"^--backbone: no such directory 'org/name/extra'$"):
        load_backbone("org/name/extra")
