"""Many SMoP adapters over one frozen backbone: a batch may mix examples of different adapters.

Each example is routed by its own adapter's router to its own adapter's prompts; the whole batch then runs
through ONE forward (or one `generate`) of the shared backbone. The adapters are tiny and sit outside any
ZeRO engine, so calling them per adapter on row subsets is safe; the backbone's embedding and forward run
once per batch on every rank, as ZeRO-3 needs.

Prompt lengths may differ. A shorter prompt is LEFT-padded with masked positions:

    row of adapter A (l=5, L=8):  [pad pad pad P1 P2 P3 P4 P5 | x1 ... xn pad ...]
    mask                          [ 0   0   0  1  1  1  1  1  | 1  ...  1  0  ...]

so that the prompt stays adjacent to its input. T5 attention has only a relative position bias, so every
real position sees exactly the distances it saw when the adapter ran alone; masked keys get zero attention
weight. (Right-padding the prompt would move the input away from it and change the bias.)
"""
from __future__ import annotations

import torch
from torch import nn

from trainer.methods.prompted import candidate_scores
from trainer.methods.smop import SMoP


class MultiAdapterT5:
    """A frozen T5 and a named set of SMoP adapters sharing its width.

    Args:
        backbone: the T5 (plain, or ZeRO-3 sharded: only its modules are called, its weights never read).
        adapters: name -> SMoP, in eval mode.
    """

    def __init__(self, backbone: nn.Module, adapters: dict[str, SMoP]):
        if not adapters:
            raise ValueError("no adapters given")
        widths = {name: smop.d_model for name, smop in adapters.items()}
        if len(set(widths.values()) | {backbone.config.d_model}) != 1:
            raise ValueError(f"adapter widths {widths} do not all match the backbone's d_model "
                             f"{backbone.config.d_model}")
        self.backbone, self.adapters = backbone, dict(adapters)
        self.names = list(self.adapters)
        self.prompt_length = max(smop.prompt_length for smop in self.adapters.values())  # L

    def adapter_ids(self, names: list[str]) -> torch.Tensor:
        """(batch,) indices into self.names; ValueError naming an unknown adapter."""
        unknown = sorted(set(names) - set(self.names))
        if unknown:
            raise ValueError(f"unknown adapter(s) {', '.join(unknown)}; loaded: {', '.join(self.names)}")
        return torch.tensor([self.names.index(n) for n in names], dtype=torch.long)

    @torch.no_grad()
    def encoder_inputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                       adapter_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """input_ids/attention_mask (batch, seq), adapter_ids (batch,) ->
        embeds (batch, L + seq, d), mask (batch, L + seq), prompt index (batch,) chosen by each router."""
        tokens = self.backbone.get_input_embeddings()(input_ids)  # (batch, seq, d), called once for ZeRO-3
        batch, length = input_ids.shape[0], self.prompt_length
        prompts = tokens.new_zeros(batch, length, tokens.shape[-1], dtype=torch.float32)  # (batch, L, d)
        prompt_mask = attention_mask.new_zeros(batch, length)  # (batch, L)
        index = torch.zeros(batch, dtype=torch.long, device=input_ids.device)
        adapter_ids = adapter_ids.to(input_ids.device)
        for a, name in enumerate(self.names):
            rows = (adapter_ids == a).nonzero().squeeze(1)
            if rows.numel() == 0:
                continue
            smop = self.adapters[name]
            own, routing = smop(tokens[rows], attention_mask[rows])  # (rows, l, d); the router sees no padding
            start = length - smop.prompt_length
            prompts[rows, start:] = own
            prompt_mask[rows, start:] = 1
            index[rows] = routing.index
        embeds = torch.cat([prompts.to(tokens.dtype), tokens], dim=1)
        return embeds, torch.cat([prompt_mask, attention_mask], dim=1), index

    @torch.no_grad()
    def generate(self, batch: dict, adapter_ids: torch.Tensor, max_new_tokens: int, synced_gpus: bool = False,
                 **generate_kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        """Greedy decoding of the mixed batch in one backbone.generate; returns (ids, prompt index)."""
        embeds, mask, index = self.encoder_inputs(batch["input_ids"], batch["attention_mask"], adapter_ids)
        kwargs = {"do_sample": False, "num_beams": 1, **generate_kwargs}
        out = self.backbone.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=max_new_tokens,
                                     synced_gpus=synced_gpus, **kwargs)
        return out, index

    @torch.no_grad()
    def score_candidates(self, batch: dict, adapter_ids: torch.Tensor,
                         candidates: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Rank classification (`candidate_scores`): (batch, C) summed log-probs, and the prompt index."""
        embeds, mask, index = self.encoder_inputs(batch["input_ids"], batch["attention_mask"], adapter_ids)
        return candidate_scores(self.backbone, embeds, mask, candidates), index
