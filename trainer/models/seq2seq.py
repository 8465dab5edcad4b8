"""The encoder-decoder family (T5): prompts are prepended to the encoder input; the decoder is untouched.

Every function takes the backbone (plain, or ZeRO-3 partitioned: only its modules are called, its weights
never read) and a `PromptFn`: given the input token embeddings (batch, S, d) and their mask, it returns the
prompts (batch, L, d) fp32, their mask (batch, L) and what the method decided (its `Routing`, or the mixed
adapters' prompt index), which each function returns beside its result. Inputs arrive right-padded, as
`trainer.data.batch.collate` makes them; labels are padded with -100.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

PromptFn = Callable[[torch.Tensor, torch.Tensor], tuple]
"""(tokens (batch, S, d), mask (batch, S)) -> (prompts (batch, L, d) fp32, prompt mask (batch, L), decision)."""


def encoder_inputs(backbone: nn.Module, prompt_fn: PromptFn, input_ids: torch.Tensor, attention_mask: torch.Tensor):
    """[prompts ; input embeddings] (batch, L + S, d) in the backbone's dtype, its mask, and the decision.

    The embeddings come from calling the embedding module (under ZeRO-3 its hooks gather the partitioned
    matrix); the prompts come first, so T5's relative position bias sees the distances it trained with."""
    tokens = backbone.get_input_embeddings()(input_ids)  # (batch, S, d), backbone dtype
    prompts, prompt_mask, decision = prompt_fn(tokens, attention_mask)
    embeds = torch.cat([prompts.to(tokens.dtype), tokens], dim=1)
    return embeds, torch.cat([prompt_mask.to(attention_mask.dtype), attention_mask], dim=1), decision


def loss_sum(backbone: nn.Module, prompt_fn: PromptFn, batch: dict) -> tuple[torch.Tensor, torch.Tensor, object]:
    """Summed token cross-entropy of the targets (fp32), the number of target tokens, and the decision."""
    embeds, mask, decision = encoder_inputs(backbone, prompt_fn, batch["input_ids"], batch["attention_mask"])
    labels = batch["labels"]
    logits = backbone(inputs_embeds=embeds, attention_mask=mask,
                      decoder_input_ids=backbone._shift_right(labels)).logits
    loss = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100, reduction="sum")
    return loss, (labels != -100).sum(), decision


@torch.no_grad()
def candidate_scores(backbone: nn.Module, prompt_fn: PromptFn, batch: dict,
                     candidates: list[torch.Tensor]) -> tuple[torch.Tensor, object]:
    """Rank classification: (batch, C) fp32 summed log-probabilities of each candidate target (token ids ending
    in </s>, shared by the batch). The encoder runs once; each candidate re-runs only the decoder."""
    embeds, mask, decision = encoder_inputs(backbone, prompt_fn, batch["input_ids"], batch["attention_mask"])
    encoded = backbone.get_encoder()(inputs_embeds=embeds, attention_mask=mask)
    scores = []
    for ids in candidates:
        labels = ids.to(embeds.device).expand(embeds.shape[0], -1)  # (batch, len)
        logits = backbone(encoder_outputs=encoded, attention_mask=mask,
                          decoder_input_ids=backbone._shift_right(labels)).logits
        logp = logits.float().log_softmax(-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)  # (batch, len)
        scores.append(logp.sum(-1))
    return torch.stack(scores, dim=1), decision


@torch.no_grad()
def generate(backbone: nn.Module, prompt_fn: PromptFn, batch: dict, max_new_tokens: int, synced_gpus: bool,
             **generate_kwargs) -> tuple[torch.Tensor, object]:
    """Greedy decoding (unless `generate_kwargs` say otherwise); `synced_gpus` keeps every ZeRO-3 rank
    stepping until all have finished. Returns the decoder's ids (decode them with skip_special_tokens)."""
    embeds, mask, decision = encoder_inputs(backbone, prompt_fn, batch["input_ids"], batch["attention_mask"])
    # Pad is T5's decoder start token and never a target. A trained T5 never emits it; a random or barely
    # trained one can, and then decodes to "" for every input. Forbidding it changes nothing for the former.
    pad = getattr(backbone, "module", backbone).config.pad_token_id  # a trained backbone's engine has its own
    kwargs = {"do_sample": False, "num_beams": 1, "suppress_tokens": [pad], **generate_kwargs}
    out = backbone.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=max_new_tokens,
                            synced_gpus=synced_gpus, **kwargs)
    return out, decision


def prompt_layers(backbone: nn.Module) -> list[nn.Module]:
    """The blocks whose inputs carry the prompt positions: the encoder's (IAPT writes before each)."""
    return list(backbone.encoder.block)


def blocks(backbone: nn.Module) -> list[nn.Module]:
    """Every repeated transformer block (compiled one by one by trainer/runtime/compile.py)."""
    return [b for stack in (backbone.encoder, backbone.decoder) for b in stack.block]


def context_window(config) -> int | None:
    """T5's relative positions have no hard limit: None."""
    return None
