"""The prompted model: trainable prompts prepended to the encoder input of the frozen backbone."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trainer.methods.router import Routing, single_prompt
from trainer.methods.registry import PromptMethod


class NoPrompt(nn.Module):
    """The prompt slot of full fine-tuning: nothing is prepended, the backbone itself trains."""

    num_prompts, prompt_length, router = 1, 0, None

    def __init__(self, d_model: int):
        super().__init__()
        self.d_model = d_model

    def forward(self, embeds: torch.Tensor, mask: torch.Tensor, noise=None) -> tuple[torch.Tensor, Routing]:
        return embeds.new_zeros(embeds.shape[0], 0, self.d_model), single_prompt(embeds.shape[0], embeds.device)


class PromptedT5:
    """Runs `backbone` (a T5, possibly ZeRO-3 partitioned) on `[P_hat ; X]`, P_hat chosen by `method`.

    `method` fills the prompt slot (a `PromptMethod`, trainer/methods/registry.py): an `SMoP` (SMoP, prompt
    tuning, P-tuning), an `IAPT` (placeholders its hooks overwrite), a `NoPrompt` (full fine-tuning) or a
    registered method of your own.

    The input embeddings come from calling the backbone's embedding module (under ZeRO-3 its hooks gather
    the partitioned matrix); they feed the router and, after the prompt, the encoder. The decoder is
    untouched.
    """

    def __init__(self, backbone: nn.Module, method: PromptMethod):
        self.backbone, self.method = backbone, method
        # The model's own config: when the backbone trains it is the DeepSpeed engine, whose `.config` is
        # the DeepSpeed dict.
        self.config = getattr(backbone, "module", backbone).config

    def train(self, mode: bool = True) -> None:
        self.backbone.train(mode)
        self.method.train(mode)

    def encoder_inputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                       noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, Routing]:
        """input_ids/attention_mask (batch, seq) -> embeds (batch, l + seq, d), mask (batch, l + seq)."""
        tokens = self.backbone.get_input_embeddings()(input_ids)  # (batch, seq, d), backbone dtype
        prompts, routing = self.method(tokens, attention_mask, noise)  # (batch, l, d) fp32
        embeds = torch.cat([prompts.to(tokens.dtype), tokens], dim=1)
        ones = attention_mask.new_ones(attention_mask.shape[0], prompts.shape[1])
        return embeds, torch.cat([ones, attention_mask], dim=1), routing

    def loss_sum(self, batch: dict, noise: torch.Tensor | None = None):
        """Summed token cross-entropy of the targets, the number of target tokens, and the routing.

        A sum, not a mean: the caller divides by the token count of the whole global batch, so that any
        split of that batch over ranks and micro batches gives the same gradient.
        """
        embeds, mask, routing = self.encoder_inputs(batch["input_ids"], batch["attention_mask"], noise)
        labels = batch["labels"]
        logits = self.backbone(inputs_embeds=embeds, attention_mask=mask,
                               decoder_input_ids=self.backbone._shift_right(labels)).logits
        loss = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100, reduction="sum")
        return loss, (labels != -100).sum(), routing

    @torch.no_grad()
    def score_candidates(self, batch: dict, candidates: list[torch.Tensor]) -> tuple[torch.Tensor, Routing]:
        """Rank classification: `candidate_scores` of the prompted inputs, and the routing."""
        embeds, mask, routing = self.encoder_inputs(batch["input_ids"], batch["attention_mask"])
        return candidate_scores(self.backbone, embeds, mask, candidates), routing

    @torch.no_grad()
    def generate(self, batch: dict, max_new_tokens: int, synced_gpus: bool) -> tuple[torch.Tensor, Routing]:
        """Greedy decoding. `synced_gpus` keeps every ZeRO-3 rank stepping until all have finished."""
        embeds, mask, routing = self.encoder_inputs(batch["input_ids"], batch["attention_mask"])
        # Pad is T5's decoder start token and never a target. A trained T5 never emits it; a random or barely
        # trained one can, and then decodes to "" for every input. Forbidding it changes nothing for the former.
        out = self.backbone.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=max_new_tokens,
                                     do_sample=False, num_beams=1, synced_gpus=synced_gpus,
                                     suppress_tokens=[self.config.pad_token_id])
        return out, routing


@torch.no_grad()
def candidate_scores(backbone: nn.Module, embeds: torch.Tensor, mask: torch.Tensor,
                     candidates: list[torch.Tensor]) -> torch.Tensor:
    """The log-likelihood of each candidate target for every example (rank classification).

    embeds (batch, n, d) and mask (batch, n): the encoder input, prompts included. candidates: C tensors of
    target ids (each ending in </s>), shared by the batch. Returns (batch, C) fp32 summed log-probabilities of
    each candidate's tokens. The encoder runs once; each candidate re-runs only the decoder.
    """
    encoded = backbone.get_encoder()(inputs_embeds=embeds, attention_mask=mask)
    scores = []
    for ids in candidates:
        labels = ids.to(embeds.device).expand(embeds.shape[0], -1)  # (batch, len)
        logits = backbone(encoder_outputs=encoded, attention_mask=mask,
                          decoder_input_ids=backbone._shift_right(labels)).logits
        logp = logits.float().log_softmax(-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)  # (batch, len)
        scores.append(logp.sum(-1))
    return torch.stack(scores, dim=1)
