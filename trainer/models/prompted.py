"""`PromptedModel`: a frozen (or trained) backbone with the method in its prompt slot, run through its family.

The method fills the prompt slot (a `PromptMethod`, trainer/methods/registry.py): an `SMoP` (SMoP, prompt
tuning, P-tuning), an `IAPT` (placeholders its hooks overwrite), a `NoPrompt` (full fine-tuning) or a
registered method of your own. It sees the input token embeddings (called through the backbone's embedding
module, so ZeRO-3 gathers the partitioned matrix) and returns the prompts; the family (seq2seq.py,
causal.py) places them and computes the loss, the candidate scores or the generation.
"""
from __future__ import annotations

from types import ModuleType

import torch
from torch import nn

from trainer.methods.registry import PromptMethod
from trainer.methods.router import Routing


class PromptedModel:
    """Args:
        backbone: the backbone module to call (ZeRO-3 partitioned or not; with a trained backbone, the
            DeepSpeed engine).
        method: the module in the prompt slot.
        family: the family's implementation module (trainer/models/family.py `implementation`).
    """

    def __init__(self, backbone: nn.Module, method: PromptMethod, family: ModuleType):
        self.backbone, self.method, self.family = backbone, method, family
        # The model's own config: when the backbone trains it is the DeepSpeed engine, whose `.config` is
        # the DeepSpeed dict.
        self.config = getattr(backbone, "module", backbone).config

    def train(self, mode: bool = True) -> None:
        self.backbone.train(mode)
        self.method.train(mode)

    def prompt_fn(self, noise: torch.Tensor | None = None):
        """The method as a `PromptFn`: every example gets all of its method's prompt positions."""
        def prompts(tokens: torch.Tensor, mask: torch.Tensor):
            out, routing = self.method(tokens, mask, noise)  # (batch, l, d) fp32
            return out, mask.new_ones(out.shape[:2]), routing
        return prompts

    def loss_sum(self, batch: dict, noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, Routing]:
        """Summed token cross-entropy of the targets, the number of target tokens, and the routing.

        A sum, not a mean: the caller divides by the token count of the whole global batch, so that any
        split of that batch over ranks and micro batches gives the same gradient.
        """
        return self.family.loss_sum(self.backbone, self.prompt_fn(noise), batch)

    @torch.no_grad()
    def score_candidates(self, batch: dict, candidates: list[torch.Tensor]) -> tuple[torch.Tensor, Routing]:
        """Rank classification: (batch, C) summed log-probabilities of each candidate, and the routing."""
        return self.family.candidate_scores(self.backbone, self.prompt_fn(), batch, candidates)

    @torch.no_grad()
    def generate(self, batch: dict, max_new_tokens: int, synced_gpus: bool) -> tuple[torch.Tensor, Routing]:
        """Greedy decoding. `synced_gpus` keeps every ZeRO-3 rank stepping until all have finished."""
        return self.family.generate(self.backbone, self.prompt_fn(), batch, max_new_tokens, synced_gpus)
