"""The SMoP router: one bias-free linear map from the mean input embedding to k prompt logits.

Every routing variant of the paper's ablation is a configuration of this one module; it returns mixing
weights `w` (batch, k) and the caller forms the prompt as `sum_j w_j P_j`. For top-1 routing `w` has one
non-zero entry, `p_c`, so the sum is exactly `p_c * P_c` of the example's own choice (adding exact zeros
changes nothing); the released SMoP code instead summed the choices of the whole batch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from trainer.choice import Choice


class RoutingVariant(Choice):
    """routing variant: the routing table of docs/method.md §1 (the paper's SMoP, top-1 with noise, and its ablations)."""
    SMOP = "smop"
    TOP1 = "top1"
    TOPK = "topk"
    DENSE = "dense"
    GUMBEL = "gumbel"
    RANDOM = "random"


class RouterInput(Choice):
    """router input: the mean input embedding minus its training-set mean, or as it is."""
    CENTERED = "centered"
    RAW = "raw"


class RouterInit(Choice):
    """router init: the rows at step 0, the paper's orthogonal draw or k-means centroids of the inputs."""
    ORTHOGONAL = "orthogonal"
    KMEANS = "kmeans"



@dataclass
class Routing:
    """What the router decided for a batch.

    weights: (batch, k) fp32 mixing weights applied to the prompts.
    probs:   (batch, k) fp32 router probabilities (uniform for 'random').
    index:   (batch,) the prompt each example counts as routed to (its largest weight).
    aux_loss: scalar load-balancing loss (0 unless balance_coef > 0).
    clean_index: (batch,) the prompt the same logits pick without the training noise: the choice evaluation
        and prediction would make. Equal to `index` at evaluation and for noise-free variants.
    """

    weights: torch.Tensor
    probs: torch.Tensor
    index: torch.Tensor
    aux_loss: torch.Tensor
    clean_index: torch.Tensor


def single_prompt(batch: int, device) -> Routing:
    """The routing of a method with one prompt and no router: every example gets it with weight 1."""
    ones, first = torch.ones(batch, 1, device=device), torch.zeros(batch, dtype=torch.long, device=device)
    return Routing(ones, ones, first, torch.zeros((), device=device), first)


class Router(nn.Module):
    """Routes each example to prompts from its masked-mean input embedding.

    Args:
        d_model: width of the input embeddings.
        num_prompts: k.
        variant: a `RoutingVariant` (or its value).
        top_k: prompts mixed per example by 'topk'.
        noise_scale: sigma of 'smop''s multiplicative logit noise, training only.
        gumbel_temperature: temperature of 'gumbel'.
        balance_coef: alpha of the Switch-style balance loss (0 disables).
        centered: subtract a fixed vector `center` (d_model,) from the input before the projection. The mean
            input embedding of every example shares one large direction (embedding anisotropy), so raw
            logits differ more between prompts than between examples and one prompt can win everywhere from
            initialisation on; with the training-set mean removed, the logits see what tells inputs apart.
            `center` is a buffer: set once before training (trainer/methods/router_init.py) and saved with the router,
            so evaluation, resume and adapters route exactly as training did. False: the paper's router.

    Input shape: pooled (batch, d_model); noise (batch, k) standard normal or None (drawn here).
    Output: `Routing` with (batch, k) weights.
    """

    def __init__(self, d_model: int, num_prompts: int, variant: str = "smop", top_k: int = 2,
                 noise_scale: float = 1.0, gumbel_temperature: float = 1.0, balance_coef: float = 0.0,
                 centered: bool = False):
        super().__init__()
        self.num_prompts, self.variant, self.top_k = num_prompts, RoutingVariant(variant), top_k
        self.noise_scale, self.temperature, self.balance_coef = noise_scale, gumbel_temperature, balance_coef
        # 'random' routes without looking at the input, so it has no parameters to train.
        self.proj = None
        if self.variant != RoutingVariant.RANDOM:
            self.proj = nn.Linear(d_model, num_prompts, bias=False, dtype=torch.float32)
            nn.init.orthogonal_(self.proj.weight)
        centered = centered and self.proj is not None
        self.register_buffer("center", torch.zeros(d_model, dtype=torch.float32) if centered else None)

    def forward(self, pooled: torch.Tensor, noise: torch.Tensor | None = None) -> Routing:
        batch, k = pooled.shape[0], self.num_prompts
        if noise is None and self.training:
            noise = torch.randn(batch, k, device=pooled.device)
        if self.proj is None:
            return self._random(batch, noise, pooled.device)

        # Logits, noise, softmax and arg-max in fp32: bf16 ties would flip the arg-max.
        pooled = pooled.float() if self.center is None else pooled.float() - self.center
        logits = pooled @ self.proj.weight.t()  # (batch, k)
        clean_index = logits.argmax(-1)
        if self.training and self.variant == RoutingVariant.SMOP and self.noise_scale > 0:
            # Official SMoP noise: relative to each logit, gradient through the clean logits only.
            logits = logits + self.noise_scale * noise * logits.detach()
        probs = logits.softmax(dim=-1)  # (batch, k)

        if self.variant in (RoutingVariant.SMOP, RoutingVariant.TOP1):
            weights = probs * F.one_hot(probs.argmax(-1), k)
        elif self.variant == RoutingVariant.TOPK:
            chosen = torch.zeros_like(probs).scatter_(1, probs.topk(self.top_k, dim=-1).indices, 1.0)
            weights = probs * chosen  # not renormalised, as in the paper's ablation
        elif self.variant == RoutingVariant.DENSE:
            weights = probs
        else:  # gumbel
            weights = self._gumbel(logits, noise)
        index = weights.argmax(-1)
        return Routing(weights, probs, index, self._balance_loss(probs, index), clean_index)

    def _gumbel(self, logits: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        hard = F.one_hot(logits.argmax(-1), self.num_prompts).float()
        if not self.training:
            return hard
        # Gumbel noise from the shared standard-normal draw: u = Phi(noise), g = -log(-log u).
        u = (0.5 * (1 + torch.erf(noise / math.sqrt(2)))).clamp(1e-6, 1 - 1e-6)
        soft = ((logits - torch.log(-torch.log(u))) / self.temperature).softmax(-1)
        hard = F.one_hot(soft.argmax(-1), self.num_prompts).float()
        return hard - soft.detach() + soft  # straight-through: forward one-hot, gradient of the soft sample

    def _random(self, batch: int, noise: torch.Tensor | None, device) -> Routing:
        k = self.num_prompts
        probs = torch.full((batch, k), 1.0 / k, device=device)
        if self.training:
            # The arg-max of i.i.d. normals is a uniformly random prompt, reproducible from the noise.
            index = noise.argmax(-1)
            weights = F.one_hot(index, k).float()
        else:
            weights, index = probs, torch.zeros(batch, dtype=torch.long, device=device)
        # Without noise 'random' mixes all prompts (what evaluation does), counted as prompt 0 like there.
        return Routing(weights, probs, index, torch.zeros((), device=device),
                       torch.zeros(batch, dtype=torch.long, device=device))

    def _balance_loss(self, probs: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Switch Transformer load balancing: alpha * k * sum_i f_i * mean_p_i."""
        if self.balance_coef == 0:
            return torch.zeros((), device=probs.device)
        fraction = F.one_hot(index, self.num_prompts).float().mean(0)  # (k,) no gradient
        return self.balance_coef * self.num_prompts * (fraction * probs.mean(0)).sum()
