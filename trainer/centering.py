"""The centre of the router's input: the mean of x̄ (masked-mean input embedding) over training examples.

Why: x̄ of every input shares one large direction (the frozen embeddings are anisotropic; on the tiny T5s
of this project ~80% of ‖x̄‖² is the training-set mean), so the raw logits `x̄ U` differ more between prompts
than between examples and one prompt wins everywhere from step 0. Subtracting the mean leaves what tells
inputs apart. See README "Routing that mixes".

The estimate is a function of the data and the frozen embeddings only: an evenly spaced sample of the
training set, each rank embedding its share (the same number of embedding calls on every rank, as ZeRO-3
needs), summed in fp64 and all-reduced, so every rank and every world size gets the same vector. It is
estimated once before step 0 and then lives in the router's `center` buffer: checkpoints, resume and
adapters carry it, so evaluation and prediction never depend on the batch.
"""
from __future__ import annotations

import torch

from trainer import distributed
from trainer.data import Encoded, collate, eval_shards
from trainer.smop import masked_mean


@torch.no_grad()
def estimate_center(embed: torch.nn.Module, data: Encoded, pad_id: int, rank: int, world: int, device,
                    max_examples: int, batch_size: int = 64) -> torch.Tensor:
    """Mean x̄ (d,) fp32 over at most `max_examples` evenly spaced training examples, identical on every rank.

    embed: the backbone's input embedding module (called, not read: under ZeRO-3 its hooks gather it).
    """
    n = len(data.examples)
    stride = max(1, -(-n // max_examples))  # ceil: at most max_examples, spread over every task of a mixture
    sample = list(range(0, n, stride))
    total, count = None, 0
    for shard in eval_shards(len(sample), rank, world, batch_size):
        rows = [sample[j] for j in shard]
        batch = collate(data, rows or sample[:1], pad_id)  # a rank with nothing left embeds a placeholder
        mask = batch["attention_mask"].to(device)
        pooled = masked_mean(embed(batch["input_ids"].to(device)), mask).double()  # (batch, d)
        part = pooled.sum(0) if rows else torch.zeros_like(pooled[0])
        total = part if total is None else total + part
        count += len(rows)
    # fp64 sums: the all-reduced total does not depend (at fp32 precision) on how examples were split.
    sums = distributed.all_reduce_sum(torch.cat([total, torch.tensor([float(count)], dtype=torch.float64,
                                                                      device=total.device)]))
    return (sums[:-1] / sums[-1]).float()
