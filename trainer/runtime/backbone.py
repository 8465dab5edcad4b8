"""The frozen T5 backbone: a random tiny T5, a hub checkpoint, or a save_pretrained directory.

Under ZeRO-3 the model is built or loaded inside `zero3_construction`, so its weights go straight into
partitions and no rank ever materialises the whole backbone.
"""
from __future__ import annotations

import torch
from torch import nn
from transformers import AutoModelForSeq2SeqLM, T5Config, T5ForConditionalGeneration

from trainer.config import ModelConfig

from trainer.paths import model_location
from trainer.runtime.distributed import zero3_construction


def build_backbone(cfg: ModelConfig, vocab_size: int, ds_config: dict, dtype: torch.dtype) -> nn.Module:
    """Build or load the backbone in `dtype` and freeze it.

    Args:
        cfg: the model section of the run config.
        vocab_size: the tokenizer's vocabulary (sizes the 'tiny' model's embedding).
        ds_config: the merged DeepSpeed config (decides whether to construct into ZeRO-3 partitions).
        dtype: parameter dtype (bf16 on GPUs, fp32 on the CPU).
    """
    with zero3_construction(ds_config):
        if cfg.name_or_path == "tiny":
            model = T5ForConditionalGeneration._from_config(tiny_t5_config(cfg, vocab_size), dtype=dtype)
        else:
            try:
                model = AutoModelForSeq2SeqLM.from_pretrained(
                    model_location(cfg.name_or_path), dtype=dtype, trust_remote_code=cfg.trust_remote_code)
            except OSError as e:
                raise ValueError(f"model.name_or_path: cannot load '{cfg.name_or_path}' "
                                 f"({str(e).splitlines()[0]})") from None
    if cfg.dropout is not None:
        set_dropout(model, cfg.dropout)
    model.requires_grad_(False)
    return model


def tiny_t5_config(cfg: ModelConfig, vocab_size: int) -> T5Config:
    """A T5 config from the `model.tiny` fields: gated-GELU feed-forward (v1.1) but a tied, rescaled output
    layer (v1.0): a random untied head has logits of standard deviation ~sqrt(d), too peaked to tune."""
    t = cfg.tiny
    return T5Config(vocab_size=t.vocab_size or vocab_size, d_model=t.d_model, d_ff=t.d_ff, d_kv=t.d_kv,
                    num_heads=t.num_heads, num_layers=t.num_layers, num_decoder_layers=t.num_layers,
                    feed_forward_proj="gated-gelu", tie_word_embeddings=True,
                    dropout_rate=0.1 if cfg.dropout is None else cfg.dropout,
                    pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)


def set_dropout(model: nn.Module, rate: float) -> None:
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = rate
    model.config.dropout_rate = rate
