"""The backbone's attention: transformers runs T5 through PyTorch SDPA, and that must equal eager attention.

T5 adds the relative-position bias and the mask to the scores and does not scale them by 1/sqrt(d_kv); SDPA
with attn_mask = bias + mask and scale = 1.0 is the same computation. transformers (5.x) does this itself
(`config._attn_implementation == "sdpa"` by default, position_bias passed as the SDPA mask), so the trainer
needs no attention patch of its own. These tests hold that in place: if a transformers upgrade changes
the default or the folding of the bias, they fail.
"""
import torch

from trainer.config import load_config
from trainer.models.build import backbone_config
from trainer.runtime.backbone import build_backbone

SHAPE = ["model.name_or_path=tiny",
         "model.tiny.d_model=64", "model.tiny.d_ff=128", "model.tiny.d_kv=16", "model.tiny.num_heads=4",
         "model.tiny.num_layers=2", "model.dropout=0.0"]


def _backbone():
    torch.manual_seed(0)
    model = load_config(None, SHAPE).model
    return build_backbone(model, backbone_config(model, 100), {}, torch.float32)


def test_the_backbone_uses_sdpa_attention_with_t5s_unit_scale():
    model = _backbone()
    assert model.config._attn_implementation == "sdpa"
    from transformers.models.t5.modeling_t5 import T5Attention

    assert {m.scaling for m in model.modules() if isinstance(m, T5Attention)} == {1.0}


def test_sdpa_matches_eager_in_loss_prompt_gradient_and_generation():
    model = _backbone()
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 100, (3, 12), generator=gen)
    mask = torch.ones_like(ids)
    mask[0, 8:] = 0  # a padded row: the mask is folded into the bias
    labels = torch.randint(3, 100, (3, 5), generator=gen)

    def run(impl):
        model.set_attn_implementation(impl)
        embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)  # stands in for the prompts
        out = model(inputs_embeds=embeds, attention_mask=mask, labels=labels)
        out.loss.backward()
        generated = model.generate(inputs_embeds=embeds.detach(), attention_mask=mask, max_new_tokens=4,
                                   min_new_tokens=4, do_sample=False, num_beams=1)
        return out.logits.detach(), embeds.grad, generated

    eager, sdpa = run("eager"), run("sdpa")
    torch.testing.assert_close(sdpa[0], eager[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sdpa[1], eager[1], atol=1e-6, rtol=1e-5)
    assert torch.equal(sdpa[2], eager[2])  # the cached decoder path of generate
