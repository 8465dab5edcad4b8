"""Many SMoP adapters over one frozen backbone of either family: a batch may mix examples of different adapters.

Each example is routed by its own adapter's router to its own adapter's prompts; the whole batch then runs
through ONE forward (or one `generate`) of the shared backbone, through its family's functions
(trainer/models/). The adapters are tiny and sit outside any ZeRO engine, so calling them per adapter on row
subsets is safe; the backbone's embedding and forward run once per batch on every rank, as ZeRO-3 needs.

Prompt lengths may differ. A shorter prompt is LEFT-padded with masked positions:

    row of adapter A (l=5, L=8):  [pad pad pad P1 P2 P3 P4 P5 | x1 ... xn ...]
    mask                          [ 0   0   0  1  1  1  1  1  |  1 ...  1 ...]

so that the prompt stays adjacent to its input. T5 attention has only a relative position bias, so every
real position sees exactly the distances it saw when the adapter ran alone; masked keys get zero attention
weight. (Right-padding the prompt would move the input away from it and change the bias.) A causal LM counts
positions over the real tokens only, so there too every real token keeps the position it has alone.
"""
from __future__ import annotations

from types import ModuleType

import torch
from torch import nn

from trainer.methods.smop import SMoP
from trainer.models.family import family_of, implementation


class MultiAdapterModel:
    """A frozen backbone and a named set of SMoP adapters sharing its width.

    Args:
        backbone: the backbone (plain, or ZeRO-3 sharded: only its modules are called, its weights never read).
        adapters: name -> SMoP, in eval mode.
        family: the backbone's family module; default: from its config.
    """

    def __init__(self, backbone: nn.Module, adapters: dict[str, SMoP], family: ModuleType | None = None):
        if not adapters:
            raise ValueError("no adapters given")
        widths = {name: smop.d_model for name, smop in adapters.items()}
        if len(set(widths.values()) | {backbone.config.hidden_size}) != 1:
            raise ValueError(f"adapter widths {widths} do not all match the backbone's width "
                             f"{backbone.config.hidden_size}")
        self.backbone, self.adapters = backbone, dict(adapters)
        self.family = family or implementation(family_of(backbone.config))
        self.names = list(self.adapters)
        self.prompt_length = max(smop.prompt_length for smop in self.adapters.values())  # L

    def adapter_ids(self, names: list[str]) -> torch.Tensor:
        """(batch,) indices into self.names; ValueError naming an unknown adapter."""
        unknown = sorted(set(names) - set(self.names))
        if unknown:
            raise ValueError(f"unknown adapter(s) {', '.join(unknown)}; loaded: {', '.join(self.names)}")
        return torch.tensor([self.names.index(n) for n in names], dtype=torch.long)

    def prompt_fn(self, adapter_ids: torch.Tensor):
        """The adapters as a `PromptFn` (trainer/models/seq2seq.py): each row's prompts, left-padded to L, and
        the prompt index its own router chose."""
        def prompts(tokens: torch.Tensor, mask: torch.Tensor):
            batch, length = tokens.shape[0], self.prompt_length
            out = tokens.new_zeros(batch, length, tokens.shape[-1], dtype=torch.float32)  # (batch, L, d)
            prompt_mask = mask.new_zeros(batch, length)  # (batch, L)
            index = torch.zeros(batch, dtype=torch.long, device=tokens.device)
            ids = adapter_ids.to(tokens.device)
            for a, name in enumerate(self.names):
                rows = (ids == a).nonzero().squeeze(1)
                if rows.numel() == 0:
                    continue
                smop = self.adapters[name]
                own, routing = smop(tokens[rows], mask[rows])  # (rows, l, d); the router sees no padding
                start = length - smop.prompt_length
                out[rows, start:] = own
                prompt_mask[rows, start:] = 1
                index[rows] = routing.index
            return out, prompt_mask, index
        return prompts

    @torch.no_grad()
    def generate(self, batch: dict, adapter_ids: torch.Tensor, max_new_tokens: int, synced_gpus: bool = False,
                 **generate_kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        """Greedy decoding of the mixed batch in one backbone.generate; returns (ids, prompt index)."""
        return self.family.generate(self.backbone, self.prompt_fn(adapter_ids), batch, max_new_tokens, synced_gpus,
                                    **generate_kwargs)

    @torch.no_grad()
    def score_candidates(self, batch: dict, adapter_ids: torch.Tensor,
                         candidates: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Rank classification: (batch, C) summed log-probs of each candidate, and the prompt index."""
        return self.family.candidate_scores(self.backbone, self.prompt_fn(adapter_ids), batch, candidates)
