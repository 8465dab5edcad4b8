"""The backbone of either family: a random tiny one, a hub checkpoint, or a save_pretrained directory.

Its config is read first (no weights), so the family is known and the inputs are checked against it before
anything is built: `backbone_config`, `resolve_family`, `check_fit`; then `load` builds or loads it, frozen.
Nothing here imports DeepSpeed: trainer/runtime/backbone.py runs `load` inside ZeRO-3 construction, and
smop-predict and smop-export use it as it is on one device.
"""
from __future__ import annotations

import torch
from torch import nn
from transformers import (AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, LlamaConfig, T5Config,
                          T5ForConditionalGeneration)

from trainer.models.family import Family, family_of, implementation
from trainer.paths import model_location


def backbone_config(cfg, vocab_size: int):
    """The backbone's Hugging Face config, without its weights (no download of weights for a hub name).

    cfg: the run config's model section; vocab_size: the tokenizer's, for a 'tiny' backbone."""
    if cfg.name_or_path == "tiny":
        return tiny_causal_config(cfg, vocab_size) if cfg.family == Family.CAUSAL else tiny_t5_config(cfg, vocab_size)
    try:
        return AutoConfig.from_pretrained(model_location(cfg.name_or_path), trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError) as e:
        raise ValueError(f"model.name_or_path: cannot load the config of '{cfg.name_or_path}' "
                         f"({str(e).splitlines()[0]})") from None


def resolve_family(cfg, config) -> Family:
    """The backbone's family: read from its config, and checked against model.family when that is set."""
    found = family_of(config)
    if cfg.family not in (Family.AUTO, found):
        raise ValueError(f"model.family={cfg.family.value}, but '{cfg.name_or_path}' is {found.value} "
                         f"({type(config).__name__}); pass model.family=auto")
    return found


def check_fit(cfg, config, family: Family, tokenizer, prompt_length: int) -> None:
    """What a family cannot take, one line naming the key: a chat template outside the causal family or for a
    tokenizer without one; prompt, input and target beyond a causal LM's context window."""
    d = cfg.data
    if d.chat_template and family != Family.CAUSAL:
        raise ValueError(f"data.chat_template=true: a causal-LM option, but '{cfg.model.name_or_path}' is an "
                         "encoder-decoder (its input goes to the encoder as it is)")
    if d.chat_template and not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"data.chat_template=true: the tokenizer of '{cfg.model.tokenizer or cfg.model.name_or_path}'"
                         " has no chat template (a base model's); pass data.chat_template=false")
    window = implementation(family).context_window(config)
    if window is not None and d.max_source_length + d.max_target_length > window:
        raise ValueError(f"data.max_target_length={d.max_target_length}: with data.max_source_length="
                         f"{d.max_source_length} (prompt {prompt_length} + input) the sequence exceeds the "
                         f"backbone's context window of {window} positions; lower one of them")


def load(cfg, config, dtype: torch.dtype) -> nn.Module:
    """Build (tiny) or load the backbone of `config` in `dtype`, with model.dropout applied, frozen.

    cfg: the run config's model section; config: the backbone's config (`backbone_config`).
    """
    causal = family_of(config) == Family.CAUSAL
    if cfg.name_or_path == "tiny":
        model = (AutoModelForCausalLM.from_config(config, dtype=dtype) if causal
                 else T5ForConditionalGeneration._from_config(config, dtype=dtype))
    else:
        loader = AutoModelForCausalLM if causal else AutoModelForSeq2SeqLM
        try:
            model = loader.from_pretrained(model_location(cfg.name_or_path), dtype=dtype,
                                           trust_remote_code=cfg.trust_remote_code)
        except (OSError, ValueError) as e:
            raise ValueError(f"model.name_or_path: cannot load '{cfg.name_or_path}' "
                             f"({str(e).splitlines()[0]})") from None
    if cfg.dropout is not None:
        set_dropout(model, cfg.dropout)
    return model.requires_grad_(False)


def tiny_t5_config(cfg, vocab_size: int) -> T5Config:
    """A T5 config from the `model.tiny` fields: gated-GELU feed-forward (v1.1) but a tied, rescaled output
    layer (v1.0): a random untied head has logits of standard deviation ~sqrt(d), too peaked to tune."""
    t = cfg.tiny
    return T5Config(vocab_size=t.vocab_size or vocab_size, d_model=t.d_model, d_ff=t.d_ff, d_kv=t.d_kv,
                    num_heads=t.num_heads, num_layers=t.num_layers, num_decoder_layers=t.num_layers,
                    feed_forward_proj="gated-gelu", tie_word_embeddings=True,
                    dropout_rate=0.1 if cfg.dropout is None else cfg.dropout,
                    pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)


def tiny_causal_config(cfg, vocab_size: int) -> LlamaConfig:
    """A Llama config from the `model.tiny` fields (d_model -> hidden size, d_ff -> intermediate size, d_kv ->
    head width), tied embeddings, the trained sentencepiece tokenizer's ids (pad 0, </s> 1, no BOS)."""
    t = cfg.tiny
    return LlamaConfig(vocab_size=t.vocab_size or vocab_size, hidden_size=t.d_model, intermediate_size=t.d_ff,
                       head_dim=t.d_kv, num_attention_heads=t.num_heads, num_key_value_heads=t.kv_heads or t.num_heads,
                       num_hidden_layers=t.num_layers, max_position_embeddings=2048, tie_word_embeddings=True,
                       attention_dropout=0.0 if cfg.dropout is None else cfg.dropout,
                       pad_token_id=0, eos_token_id=1, bos_token_id=None)


def set_dropout(model: nn.Module, rate: float) -> None:
    """Every dropout of the backbone at `rate`: T5's modules and config, a causal LM's attention dropout."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = rate
        if hasattr(module, "attention_dropout"):  # causal attention: a float read in forward
            module.attention_dropout = rate
    for key in ("dropout_rate", "attention_dropout"):  # T5's, a causal LM's
        if hasattr(model.config, key):
            setattr(model.config, key, rate)
