"""What a method is to the trainer, and the one place that builds a method from config.

A method is a registry entry (`MethodSpec`) whose `build` returns the module that fills the prompt slot of
`PromptedModel` (trainer/models/prompted.py). SMoP, prompt tuning, P-tuning, IAPT and full fine-tuning are the shipped entries
(trainer/methods/builtin.py); a new one is a module with the `PromptMethod` shape and one `register` call
(README "Adding a method"). The trainer, `smop-export`, adapter loading and `smop-predict` all build through
`build_method`: nothing else constructs a method (trainer/perf/flops.py knows the shipped ones' analytic
cost by name, and has none for a plug-in).

Builders receive the run config's `prompt` section and the backbone's Hugging Face config (duck-typed; its
`hidden_size` is the width d of either family: T5Config maps the name to `d_model`). This package imports
neither trainer.config nor the distributed runtime nor the model families.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import torch
from torch import nn

from trainer.methods.router import Routing


class PromptMethod(Protocol):
    """The module a method trains (an `nn.Module`). Its parameters are replicated and fp32 on every rank
    unless its spec says `trains_backbone`.

    Input shape: embeds (batch, seq, d) frozen input embeddings, mask (batch, seq), noise (batch, k) or None.
    Output shape: prompts (batch, prompt_length, d) placed before the input (T5: the encoder's; a causal LM:
    the sequence's), and the batch's `Routing`. The embeds are the input's only, never the target's.
    """

    num_prompts: int
    """k, the routing width the balance monitor counts (1: every example takes the one prompt)."""
    prompt_length: int
    """Encoder positions prepended to every input (0: nothing is prepended)."""
    router: nn.Module | None
    """A `Router`, if any: trained at train.router_lr, fitted to the data before step 0, watched for collapse."""

    def forward(self, embeds: torch.Tensor, mask: torch.Tensor,
                noise: torch.Tensor | None = None) -> tuple[torch.Tensor, Routing]: ...


@dataclass(frozen=True)
class InitContext:
    """What a method may read to initialise itself after the backbone is sharded, the same on every rank:
    `embed` is the backbone's input embedding module (call it, do not read its weight: under ZeRO-3 calling
    it gathers the partitioned matrix)."""

    embed: nn.Module
    tokenizer: object
    train_data: object  # trainer.data.batch.Encoded
    device: torch.device
    seed: int


@dataclass(frozen=True)
class MethodSpec:
    """A method as the trainer sees it.

    build: (prompt config, backbone config) -> the `PromptMethod` module, on the CPU, deterministic in the
        torch seed (every rank builds the same one; the trainer broadcasts it anyway).
    initialise: (module, prompt config, `InitContext`) -> None, run once before step 0 after sharding
        (prompt bank from token embeddings, router fitted to the data). Not run when a run resumes.
    attach: (module, unsharded backbone, family) -> None, run before the backbone is sharded, for methods that
        hook into the backbone itself (IAPT's per-layer generators); `family` is the backbone's family module
        (trainer/models/family.py), which names its structure (`prompt_layers`, `blocks`).
    check: (prompt config) -> None, raises ValueError naming a prompt.* key this method cannot take.
    prompt_length: (prompt config) -> the module's `prompt_length` (positions prepended to every input),
        known before anything is built so that the config check can leave room for the input (default:
        prompt.prompt_length).
    trains_backbone: the backbone trains under DeepSpeed's engine (full fine-tuning); otherwise it is frozen
        and only the module's replicated parameters train, with their own optimiser and one all-reduce.
    prompt_bank: the module is an `SMoP` prompt bank (k stored prompts and, for k > 1, a router): the adapter
        format describes exactly that, so the run writes it as adapter/ and `smop-predict` serves it.
    """

    build: Callable
    initialise: Callable | None = None
    attach: Callable | None = None
    check: Callable | None = None
    prompt_length: Callable = lambda prompt: prompt.prompt_length
    trains_backbone: bool = False
    prompt_bank: bool = False


METHODS: dict[str, MethodSpec] = {}


def register(name: str, **spec) -> Callable:
    """Decorator registering a builder as method `name` (`prompt.method=name`); keyword args: MethodSpec's."""
    def add(build: Callable) -> Callable:
        if name in registered():  # the shipped entries first, so a plug-in can never take their names
            raise ValueError(f"method '{name}' is registered twice")
        METHODS[name] = MethodSpec(build, **spec)
        return build
    return add


def registered() -> dict[str, MethodSpec]:
    """Every registered method by name, the shipped ones first (trainer/methods/__init__.py registers them
    when the package is first imported, before any module of it can be used)."""
    return METHODS


def get_method(name: str) -> MethodSpec:
    if name not in registered():
        raise ValueError(f"prompt.method: unknown method '{name}'; registered: {', '.join(METHODS)}")
    return METHODS[name]


def build_method(prompt, backbone_config) -> nn.Module:
    """The prompt slot of `prompt.method`, built from the `prompt` config section and the backbone's config."""
    spec = get_method(prompt.method)
    if spec.check is not None:
        spec.check(prompt)
    return spec.build(prompt, backbone_config)
