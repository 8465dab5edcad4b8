"""The decoder-only family (Llama, Qwen2, Mistral, Gemma; `AutoModelForCausalLM`): one sequence per example,

    columns   0 .. L-1      L .. L+S-1                 L+S .. L+S+T-1
              [prompt]      [pad … pad | input]         [target | pad … pad]

The prompt takes the first L columns of every row, the input is right-aligned against the target, and the
target is left-aligned after it, so every row's target starts in the same column C = L + S. Position ids
count the real tokens only (the cumulative sum of the mask, minus one): the prompt sits at positions
0..l-1 and the input continues from l, so an example's positions, attention and output are those it has
alone, whatever its batch (docs/method.md §10). Hugging Face's `generate` derives the same positions from
the mask. The loss is the summed cross-entropy of the target tokens only, read from the T + 1 last columns'
logits (`logits_to_keep`), so the vocabulary projection never runs over the prompt and the input.

Inputs arrive right-padded, as `trainer.data.batch.collate` makes them, and end with the tokenizer's </s>
(the token that says where the input ends and the target begins, as in the seq2seq family). Labels are the
target ids plus </s>, padded with -100. `PromptFn` is seq2seq.py's: the method sees the input tokens only,
right-aligned, never the target's.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trainer.models.seq2seq import PromptFn


def right_align(values: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded rows -> right-aligned rows: each row's n real positions move to the last n columns.

    values (batch, S, ...) and mask (batch, S), real positions first in each row. Returns both realigned."""
    width = mask.shape[1]
    shift = width - mask.sum(1, keepdim=True)  # (batch, 1): pads in each row
    source = (torch.arange(width, device=mask.device) - shift) % width  # (batch, S): column j takes j - shift
    aligned = values.gather(1, source.view(*source.shape, *([1] * (values.dim() - 2))).expand_as(values))
    return aligned, mask.gather(1, source)


def sequence(backbone: nn.Module, prompt_fn: PromptFn, input_ids: torch.Tensor, attention_mask: torch.Tensor,
             labels: torch.Tensor | None = None):
    """Embeddings (batch, L + S [+ T], d), mask, position ids and the method's decision of
    [prompt ; input ; target] (no target when `labels` is None: the prefix of generation and scoring)."""
    width = input_ids.shape[1]
    ids = input_ids if labels is None else torch.cat([input_ids, labels.clamp(min=0)], dim=1)
    embedded = backbone.get_input_embeddings()(ids)  # one call: under ZeRO-3 one gather of the embedding
    tokens, mask = right_align(embedded[:, :width], attention_mask)  # (batch, S, d), (batch, S)
    prompts, prompt_mask, decision = prompt_fn(tokens, mask)  # the input tokens only: never the target's
    parts, masks = [prompts.to(tokens.dtype), tokens], [prompt_mask.to(mask.dtype), mask]
    if labels is not None:
        parts.append(embedded[:, width:])
        masks.append((labels != -100).to(mask.dtype))
    full = torch.cat(masks, dim=1)
    positions = (full.cumsum(1) - 1).clamp(min=0)  # real tokens 0, 1, 2, ...; pads are never attended to
    return torch.cat(parts, dim=1), full, positions, decision


def loss_sum(backbone: nn.Module, prompt_fn: PromptFn, batch: dict) -> tuple[torch.Tensor, torch.Tensor, object]:
    """Summed token cross-entropy of the targets (fp32), the number of target tokens, and the decision."""
    labels = batch["labels"]
    embeds, mask, positions, decision = sequence(backbone, prompt_fn, batch["input_ids"], batch["attention_mask"],
                                                 labels)
    # Columns C-1 .. C+T-2 predict the T target tokens (C: the first target column); the last is unused.
    logits = backbone(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=False,
                      logits_to_keep=labels.shape[1] + 1).logits[:, :-1]  # (batch, T, V)
    loss = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100, reduction="sum")
    return loss, (labels != -100).sum(), decision


@torch.no_grad()
def candidate_scores(backbone: nn.Module, prompt_fn: PromptFn, batch: dict, candidates: list[torch.Tensor],
                     reuse_prefix: bool = True) -> tuple[torch.Tensor, object]:
    """Rank classification: (batch, C) fp32 summed log-probabilities of each candidate target (ids ending in
    </s>, shared by the batch).

    reuse_prefix: run [prompt ; input] once and score every candidate from its KV cache (each candidate
    then costs a forward of its own length - 1 tokens; the cache is cropped back after it); False re-runs the
    whole sequence for every candidate (the reference; tools/bench/rank_scoring.py measures both)."""
    if not reuse_prefix:
        rows = batch["input_ids"].shape[0]
        scores = []
        for ids in candidates:
            labels = ids.to(batch["input_ids"].device).expand(rows, -1)
            embeds, mask, positions, decision = sequence(backbone, prompt_fn, batch["input_ids"],
                                                         batch["attention_mask"], labels)
            logits = backbone(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=False,
                              logits_to_keep=labels.shape[1] + 1).logits[:, :-1]
            scores.append(logits.float().log_softmax(-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1).sum(-1))
        return torch.stack(scores, dim=1), decision
    embeds, mask, positions, decision = sequence(backbone, prompt_fn, batch["input_ids"], batch["attention_mask"])
    rows = embeds.shape[0]
    out = backbone(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=True,
                   logits_to_keep=1)
    cache, first = out.past_key_values, out.logits[:, -1].float().log_softmax(-1)  # (batch, V): predicts c_0
    following = mask.sum(1, keepdim=True)  # (batch, 1): the position of the first candidate token
    scores = []
    for ids in candidates:
        ids = ids.to(embeds.device)
        score = first[:, ids[0]]
        if len(ids) > 1:
            fed = ids[:-1].expand(rows, -1)  # c_0 .. c_{m-2} predict c_1 .. c_{m-1}
            steps = fed.shape[1]
            logits = backbone(inputs_embeds=backbone.get_input_embeddings()(fed),
                              attention_mask=torch.cat([mask, mask.new_ones(rows, steps)], dim=1),
                              position_ids=following + torch.arange(steps, device=ids.device),
                              past_key_values=cache, use_cache=True).logits  # (batch, m - 1, V)
            score = score + logits.float().log_softmax(-1).gather(-1, ids[1:].expand(rows, -1).unsqueeze(-1)
                                                                  ).squeeze(-1).sum(-1)
            cache.crop(-steps)  # back to the prefix for the next candidate
        scores.append(score)
    return torch.stack(scores, dim=1), decision


@torch.no_grad()
def generate(backbone: nn.Module, prompt_fn: PromptFn, batch: dict, max_new_tokens: int, synced_gpus: bool,
             **generate_kwargs) -> tuple[torch.Tensor, object]:
    """Greedy decoding with the KV cache: [prompt ; input] is the prefill, the prompt enters nowhere else.
    `synced_gpus` keeps every ZeRO-3 rank stepping until all have finished. Returns the new tokens only."""
    embeds, mask, _, decision = sequence(backbone, prompt_fn, batch["input_ids"], batch["attention_mask"])
    config = getattr(backbone, "module", backbone).config  # a trained backbone's DeepSpeed engine has its own
    eos = config.eos_token_id
    pad = config.pad_token_id if config.pad_token_id is not None else (eos[0] if isinstance(eos, list) else eos)
    kwargs = {"do_sample": False, "num_beams": 1, "pad_token_id": pad, **generate_kwargs}
    if pad not in (eos if isinstance(eos, list) else [eos]):
        kwargs.setdefault("suppress_tokens", [pad])  # a barely trained model may emit pad, never a target
    out = backbone.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=max_new_tokens,
                            synced_gpus=synced_gpus, **kwargs)
    return out, decision


def prompt_layers(backbone: nn.Module) -> list[nn.Module]:
    """The decoder layers (IAPT writes its soft tokens before each)."""
    return list(backbone.model.layers)


def blocks(backbone: nn.Module) -> list[nn.Module]:
    """Every repeated transformer block (compiled one by one by trainer/runtime/compile.py)."""
    return list(backbone.model.layers)


def context_window(config) -> int | None:
    """Positions the backbone was trained for: prompt, input and target must fit in them."""
    return getattr(config, "max_position_embeddings", None)
