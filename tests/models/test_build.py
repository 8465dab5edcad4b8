"""Real checkpoint directories of each decoder-only architecture, mimicked by tiny random models saved with
save_pretrained in several shards: the family is read from the config, the weights load whole, and the
trainer trains one of them on 2 ZeRO-3 ranks (Gemma: scaled embeddings, tied output layer)."""
import json

import pytest
import torch

from tests.launch import events, run_trainer
from tests.tiny_models import ARCHITECTURES, tiny_causal_config
from trainer.config import ModelConfig
from trainer.data.tokenizer import load_tokenizer
from trainer.models import build, causal
from trainer.models.family import Family
from trainer.models.prompted import PromptedModel
from trainer.methods.smop import SMoP


def sharded_checkpoint(root, arch: str):
    """A tiny random `arch` in several safetensors shards with an index, and the shipped small Llama's
    tokenizer (its ids fit the config's vocabulary), as a hub download leaves them."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_causal_config(arch))
    model.save_pretrained(root, max_shard_size="40KB")
    load_tokenizer("tiny-pretrained-causal").save_pretrained(root)
    return model


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_a_sharded_checkpoint_loads_whole_as_the_causal_family(arch, tmp_path):
    saved = sharded_checkpoint(tmp_path, arch)
    shards = sorted(tmp_path.glob("model-*.safetensors"))
    assert len(shards) > 1 and json.loads((tmp_path / "model.safetensors.index.json").read_text())["weight_map"]
    cfg = ModelConfig(name_or_path=str(tmp_path))
    config = build.backbone_config(cfg, 0)
    assert build.resolve_family(cfg, config) == Family.CAUSAL and config.model_type == arch
    model = build.load(cfg, config, torch.float32)
    assert not any(p.requires_grad for p in model.parameters())
    for (name, a), b in zip(saved.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), name
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight  # tied, one parameter
    ids = torch.tensor([[5, 6, 7, 1], [8, 9, 1, 0]])
    batch = {"input_ids": ids, "attention_mask": (ids != 0).long(), "labels": torch.tensor([[4, 1], [3, -100]])}
    loss, count, _ = PromptedModel(model, SMoP(32, 2, 3), causal).loss_sum(batch)
    assert torch.isfinite(loss) and int(count) == 3


@pytest.mark.multiprocess
def test_trains_a_sharded_gemma_checkpoint_on_two_zero3_ranks(tmp_path):
    sharded_checkpoint(tmp_path / "gemma", "gemma")
    out = tmp_path / "run"
    run_trainer(out, f"model.name_or_path={tmp_path / 'gemma'}", "model.dropout=0", "train.max_steps=3",
                "data.max_source_length=200",
                "train.check_replicas_every=1", "eval.mode=generate", "eval.max_new_tokens=3", nproc=2)
    assert len(events(out, "train")) == 3 and all(c["identical"] for c in events(out, "replica_check"))
    info = json.loads((out / "run_info.json").read_text())
    assert info["backbone_params_on_rank0"] < info["backbone_params"]  # partitioned over the 2 ranks
    assert events(out, "eval")[-1]["num_examples"] == 16
    assert json.loads((out / "adapter" / "adapter_config.json").read_text())["backbone"]["model_type"] == "gemma"
