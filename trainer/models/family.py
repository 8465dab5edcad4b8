"""Which family a backbone belongs to, and the structure of each that a method may hook into.

`model.family=auto` reads it from the Hugging Face config: encoder-decoder (`is_encoder_decoder`, T5) or
decoder-only (a causal LM: Llama, Qwen2, Mistral, Gemma). A family is a module of functions (seq2seq.py,
causal.py) with one interface: `loss_sum`, `candidate_scores`, `generate` (each taking the backbone and a
`PromptFn`), `prompt_layers` (the stack whose inputs carry the prompt positions: IAPT's hook points),
`blocks` (the repeated blocks: compilation) and `context_window`. A method that needs more of a backbone's
structure (LoRA's attention projections, deep prompts' keys and values per layer) adds a function here,
next to these, rather than a branch in the loop.
"""
from __future__ import annotations

from types import ModuleType

from trainer.choice import Choice
from trainer.models import causal, seq2seq


class Family(Choice):
    """model family: encoder-decoder (seq2seq, T5) or decoder-only (causal), or auto from the config."""

    AUTO = "auto"
    SEQ2SEQ = "seq2seq"
    CAUSAL = "causal"


IMPLEMENTATIONS = {Family.SEQ2SEQ: seq2seq, Family.CAUSAL: causal}


def family_of(config) -> Family:
    """The family of a backbone's Hugging Face config."""
    return Family.SEQ2SEQ if getattr(config, "is_encoder_decoder", False) else Family.CAUSAL


def implementation(family: Family | str) -> ModuleType:
    """The module that implements `family` (seq2seq.py or causal.py)."""
    family = Family(family)
    if family == Family.AUTO:
        raise ValueError("model.family: auto must be resolved from the backbone's config first (family_of)")
    return IMPLEMENTATIONS[family]
