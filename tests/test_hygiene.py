"""The caller's model comes back exactly as it was: mode, grad flags, hooks, grads."""
from __future__ import annotations

import open_clip
import torch

from conftest import TINY_CFG, random_image
from zsfinercam import Localizer
from zsfinercam.backends.open_clip import OpenClipBackend


def _hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
               for m in model.modules())


def test_locate_leaves_the_callers_model_untouched():
    torch.manual_seed(0)
    model = open_clip.CLIP(**TINY_CFG).train()
    model.visual.conv1.weight.requires_grad_(False)
    before = {n: p.requires_grad for n, p in model.named_parameters()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=16)

    loc = Localizer(OpenClipBackend.from_model(model, tokenizer), cache_dir=None)
    loc.locate_many(random_image(0), ["cat", "dog", "bird"])
    loc.locate_many(loc.encode_image(random_image(1)), ["cat", "dog"])

    assert model.training and all(m.training for m in model.modules())
    assert {n: p.requires_grad for n, p in model.named_parameters()} == before
    assert all(p.grad is None for p in model.parameters())
    assert _hooks(model) == 0
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert torch.is_grad_enabled()
