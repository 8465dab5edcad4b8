"""The exported adapter: round trip, backbone checks, corrupt values, loading with no DeepSpeed."""
import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import T5Config

from trainer.inference.adapter import CONFIG, WEIGHTS, config_hash, load_adapter, save_adapter
from trainer.methods.smop import SMoP
from tests.launch import REPO as ROOT



def tiny_config(**changes) -> T5Config:
    base = dict(vocab_size=100, d_model=32, d_ff=64, d_kv=8, num_heads=4, num_layers=2, feed_forward_proj="gated-gelu")
    return T5Config(**{**base, **changes})


META = {"method": "smop", "task": "rte", "tokenizer": "t5-base",
        "backbone": {"name_or_path": "some/t5", "config_hash": config_hash(tiny_config())}}


def make_smop(seed=0, **kwargs) -> SMoP:
    torch.manual_seed(seed)
    return SMoP(32, **{"num_prompts": 3, "prompt_length": 4, **kwargs}).eval()


def test_round_trip_keeps_values_routing_and_config(tmp_path):
    smop = make_smop(routing="topk", top_k=2, noise_scale=0.5)
    save_adapter(tmp_path, smop, META)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([CONFIG, WEIGHTS])  # no pickle, no tokenizer copy
    loaded = load_adapter(tmp_path, tiny_config())
    for name, value in smop.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value) and loaded.state_dict()[name].dtype == torch.float32
    config = json.loads((tmp_path / CONFIG).read_text())
    assert (config["num_prompts"], config["prompt_length"], config["d_model"]) == (3, 4, 32)
    assert (config["routing"], config["top_k"], config["noise_scale"]) == ("topk", 2, 0.5)
    assert config["backbone"]["name_or_path"] == "some/t5" and config["task"] == "rte"
    embeds, mask = torch.randn(5, 7, 32), torch.ones(5, 7, dtype=torch.long)
    (p1, r1), (p2, r2) = smop(embeds, mask), loaded(embeds, mask)
    assert torch.equal(p1, p2) and torch.equal(r1.index, r2.index)
    assert not loaded.training


def test_centred_router_keeps_its_centre_and_routes_the_same(tmp_path):
    smop = make_smop(centered=True)
    with torch.no_grad():
        smop.router.center.normal_()
    save_adapter(tmp_path, smop, META)
    assert json.loads((tmp_path / CONFIG).read_text())["router_input"] == "centered"
    loaded = load_adapter(tmp_path)
    assert torch.equal(loaded.router.center, smop.router.center)
    embeds, mask = torch.randn(16, 7, 32), torch.ones(16, 7, dtype=torch.long)
    assert torch.equal(smop(embeds, mask)[1].index, loaded(embeds, mask)[1].index)


def test_adapter_written_before_centring_loads_as_raw(tmp_path):
    save_adapter(tmp_path, make_smop(), META)
    config = json.loads((tmp_path / CONFIG).read_text())
    assert config.pop("router_input") == "raw"
    (tmp_path / CONFIG).write_text(json.dumps(config))
    assert load_adapter(tmp_path).router.center is None


def test_bf16_module_is_saved_fp32(tmp_path):
    smop = make_smop().to(torch.bfloat16)
    save_adapter(tmp_path, smop, META)
    assert {t.dtype for t in load_file(tmp_path / WEIGHTS).values()} == {torch.float32}


def test_prompt_tuning_adapter_has_no_router(tmp_path):
    save_adapter(tmp_path, make_smop(num_prompts=1), META)
    assert set(load_file(tmp_path / WEIGHTS)) == {"prompts"}
    assert load_adapter(tmp_path).router is None


def test_hash_ignores_volatile_keys_but_not_shape():
    base = config_hash(tiny_config())
    volatile = tiny_config(dropout_rate=0.0, use_cache=False)
    volatile.transformers_version, volatile._name_or_path = "0.0.1", "/elsewhere"
    assert config_hash(volatile) == base
    assert config_hash(tiny_config(num_layers=3)) != base
    assert config_hash(tiny_config(feed_forward_proj="relu")) != base


def test_wrong_width_names_adapter_and_widths(tmp_path):
    save_adapter(tmp_path, make_smop(), META)
    with pytest.raises(ValueError) as e:
        load_adapter(tmp_path, tiny_config(d_model=64))
    message = str(e.value)
    assert str(tmp_path) in message and "d_model=32" in message and "d_model=64" in message
    assert "\n" not in message


def test_same_width_other_backbone_is_refused_by_hash(tmp_path):
    save_adapter(tmp_path, make_smop(), META)
    with pytest.raises(ValueError, match="config hash") as e:
        load_adapter(tmp_path, tiny_config(num_layers=4))
    assert str(tmp_path) in str(e.value) and "some/t5" in str(e.value)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_values_are_rejected(tmp_path, bad):
    save_adapter(tmp_path, make_smop(), META)
    tensors = load_file(tmp_path / WEIGHTS)
    tensors["router.proj.weight"][1, 2] = bad
    save_file(tensors, tmp_path / WEIGHTS)
    with pytest.raises(ValueError, match="router.proj.weight has 1 non-finite") as e:
        load_adapter(tmp_path)
    assert str(tmp_path) in str(e.value)


def test_shape_disagreeing_with_config_is_rejected(tmp_path):
    save_adapter(tmp_path, make_smop(), META)
    config = json.loads((tmp_path / CONFIG).read_text())
    (tmp_path / CONFIG).write_text(json.dumps({**config, "prompt_length": 9}))
    with pytest.raises(ValueError, match="describes"):
        load_adapter(tmp_path)


def test_missing_or_truncated_files_give_one_line(tmp_path):
    with pytest.raises(ValueError, match="cannot read adapter_config.json"):
        load_adapter(tmp_path)
    save_adapter(tmp_path, make_smop(), META)
    data = (tmp_path / WEIGHTS).read_bytes()
    (tmp_path / WEIGHTS).write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cannot read adapter.safetensors"):
        load_adapter(tmp_path)


@pytest.mark.multiprocess
def test_loads_in_a_fresh_process_without_deepspeed_or_process_group(tmp_path):
    save_adapter(tmp_path, make_smop(), META)
    code = (
        "import sys, torch\n"
        "from trainer.inference.adapter import load_adapter\n"
        f"smop = load_adapter({str(tmp_path)!r})\n"
        "prompts, routing = smop(torch.randn(2, 3, 32), torch.ones(2, 3))\n"
        "assert prompts.shape == (2, 4, 32)\n"
        "assert 'deepspeed' not in sys.modules, 'deepspeed was imported'\n"
        "assert not torch.distributed.is_initialized()\n"
        "print('ok')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]
