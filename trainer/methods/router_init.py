"""The router's data-dependent start: the centre of its input and, optionally, k-means rows.

Why a centre: x̄ (the masked-mean input embedding) of every input shares one large direction (frozen
embeddings are anisotropic; on the tiny T5s of this project ~80% of ‖x̄‖² is the training-set mean), so the
raw logits `x̄ Uᵀ` differ more between prompts than between examples and one prompt wins everywhere from
step 0. Subtracting the mean leaves what tells inputs apart. Why k-means rows: with centred inputs a random
orthogonal U still sends distinct kinds of input to the same prompt about as often as a birthday collision
(4 sub-tasks onto 4 prompts all apart: 4!/4⁴ ≈ 9% of draws); rows pointing at the k clusters of the centred
inputs give each cluster its own prompt from the first step. See README "Routing that mixes".

Every rank embeds the same evenly spaced training sample in the same batches (ZeRO-3 needs the same calls
on every rank; the embedding is a lookup, cheap next to a step) and runs the same seeded k-means, so the
result is bit-identical on every rank and every world size, with no collective. It is computed once before
step 0; the centre lives in the router's `center` buffer and the rows in its weight, so checkpoints, resume
and adapters carry them and evaluation never depends on the batch.
"""
from __future__ import annotations

import torch
from torch import nn

from trainer.data.batch import Encoded, collate
from trainer.methods.smop import masked_mean


@torch.no_grad()
def router_inputs(embed: nn.Module, data: Encoded, pad_id: int, device, max_examples: int,
                  batch_size: int = 64) -> torch.Tensor:
    """x̄ (n, d) fp32 of at most `max_examples` evenly spaced training examples (every task of a mixture).

    embed: the backbone's input embedding module (called, not read: under ZeRO-3 its hooks gather it).
    """
    n = len(data.examples)
    sample = list(range(0, n, max(1, -(-n // max_examples))))  # ceil stride: at most max_examples
    parts = []
    for start in range(0, len(sample), batch_size):
        batch = collate(data, sample[start:start + batch_size], pad_id)
        mask = batch["attention_mask"].to(device)
        parts.append(masked_mean(embed(batch["input_ids"].to(device)), mask))  # (batch, d)
    return torch.cat(parts)


def kmeans(x: torch.Tensor, k: int, generator: torch.Generator, iters: int = 50) -> torch.Tensor:
    """Centroids (k, d) of Lloyd's k-means on the rows of x, seeded k-means++ (Arthur & Vassilvitskii 2007)."""
    x = x.double().cpu()
    centroids = [x[torch.randint(len(x), (1,), generator=generator)].squeeze(0)]
    for _ in range(1, k):
        dist = torch.cdist(x, torch.stack(centroids)).min(1).values ** 2
        centroids.append(x[torch.multinomial(dist / dist.sum(), 1, generator=generator)].squeeze(0))
    centroids = torch.stack(centroids)
    for _ in range(iters):
        assign = torch.cdist(x, centroids).argmin(1)
        moved = torch.stack([x[assign == j].mean(0) if (assign == j).any() else centroids[j] for j in range(k)])
        if torch.equal(moved, centroids):
            break
        centroids = moved
    return centroids


@torch.no_grad()
def fit_router(router: nn.Module, x: torch.Tensor, rows_from_kmeans: bool, seed: int) -> None:
    """Set `router.center` (when the router is centred) to the mean of x, and with `rows_from_kmeans` its
    rows to the unit-norm k-means centroids of the (centred) inputs; unit norm keeps the orthogonal init's
    logit scale. Fewer distinct inputs than prompts: the rows stay as they are."""
    mean = x.double().mean(0)
    if router.center is not None:
        router.center.copy_(mean.float())
        x = x.double() - mean
    k = router.proj.weight.shape[0]
    if rows_from_kmeans and len(torch.unique(x, dim=0)) >= k:
        centroids = kmeans(x, k, torch.Generator().manual_seed(seed))
        router.proj.weight.copy_((centroids / centroids.norm(dim=1, keepdim=True).clamp(min=1e-12)).float())
