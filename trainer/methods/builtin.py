"""The shipped methods as registry entries: what each builds from the run config's `prompt` section.

Prompt tuning and P-tuning are configurations of SMoP (one prompt, no router; P-tuning adds a prompt
encoder); IAPT hooks generators into the encoder blocks; full fine-tuning prepends nothing and trains the
backbone itself.
"""
from __future__ import annotations

import torch
from torch import nn

from trainer.methods.iapt import IAPT
from trainer.methods.full_finetune import NoPrompt
from trainer.methods.ptuning import PromptEncoder
from trainer.methods.registry import InitContext, register
from trainer.methods.router import RouterInit, RouterInput
from trainer.methods.router_init import fit_router, router_inputs
from trainer.methods.smop import SMoP, PromptInit, init_prompts


def one_prompt(p) -> None:
    if p.num_prompts != 1:
        raise ValueError(f"prompt.num_prompts={p.num_prompts}: {p.method} uses one prompt; set it to 1")


def initialise_smop(smop: SMoP, p, ctx: InitContext) -> None:
    """The prompt bank from p.init (token embeddings for vocab/text, the same ids on every rank), scaled by
    p.init_scale; then the router's centre and rows from the training data (p.router_input, p.router_init)."""
    gen = torch.Generator().manual_seed(ctx.seed)
    ids = None
    if p.init == PromptInit.VOCAB:
        top = min(p.init_vocab_top, len(ctx.tokenizer))
        ids = torch.randint(3, top, (p.num_prompts, p.prompt_length), generator=gen)  # skip pad, </s>, unk
    elif p.init == PromptInit.TEXT:
        text_ids = ctx.tokenizer(p.init_text, add_special_tokens=False).input_ids
        repeated = (text_ids * (p.prompt_length // max(1, len(text_ids)) + 1))[: p.prompt_length]
        ids = torch.tensor(repeated).expand(p.num_prompts, -1)
    init_prompts(smop, p.init, ctx.embed, ids, gen)
    with torch.no_grad():
        smop.prompts.mul_(p.init_scale)
    router, kmeans = smop.router, p.router_init == RouterInit.KMEANS
    if router is not None and router.proj is not None and (router.center is not None or kmeans):
        x = router_inputs(ctx.embed, ctx.train_data, ctx.tokenizer.pad_token_id, ctx.device, p.router_center_examples)
        fit_router(router, x, kmeans, ctx.seed)


@register("prompt_tuning", initialise=initialise_smop, check=one_prompt, prompt_bank=True)
@register("smop", initialise=initialise_smop, prompt_bank=True)  # the lower decorator registers first
def build_smop(p, backbone_config) -> SMoP:
    """k prompts of l tokens and a router (prompt tuning: k = 1, no router)."""
    return SMoP(backbone_config.hidden_size, p.num_prompts, p.prompt_length, p.routing, p.top_k, p.noise_scale,
                p.gumbel_temperature, p.balance_coef, centered=p.router_input == RouterInput.CENTERED)


@register("ptuning", initialise=initialise_smop, check=one_prompt)
def build_ptuning(p, backbone_config) -> SMoP:
    """One prompt produced by an encoder from learned inputs (its adapter would need the encoder: none)."""
    d = backbone_config.hidden_size
    return SMoP(d, 1, p.prompt_length, encoder=PromptEncoder(d, p.ptuning_hidden, p.ptuning_encoder))


def attach_iapt(iapt: IAPT, backbone: nn.Module, family) -> None:
    # T5: the encoder blocks; a causal LM: its decoder layers (docs/method.md §6, §10). Before DeepSpeed
    # installs its own hooks on them.
    iapt.attach(family.prompt_layers(backbone))


@register("iapt", attach=attach_iapt, prompt_length=lambda p: p.iapt_prompts)
def build_iapt(p, backbone_config) -> IAPT:
    # num_hidden_layers: T5's encoder layers (T5Config maps the name to num_layers), a causal LM's layers.
    return IAPT(backbone_config.hidden_size, backbone_config.num_hidden_layers, p.iapt_bottleneck, p.iapt_prompts)


@register("full_finetune", trains_backbone=True, prompt_length=lambda p: 0)
def build_full_finetune(p, backbone_config) -> NoPrompt:
    return NoPrompt(backbone_config.hidden_size)
