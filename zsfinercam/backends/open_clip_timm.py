"""open_clip models whose image tower is a timm trunk (`TimmModel`): SigLIP and friends.

The tower is `TimmModel.trunk` (a timm VisionTransformer) followed by `TimmModel.head`
(open_clip's optional projection). Pooling, prefix tokens and grid are read from the
trunk; see `timm_vit` for the target each pooling gets and what `embed` runs.

SigLIP's logits are `exp(logit_scale) * cos + logit_bias`. The bias is the same for
every concept, so it moves no map and no softmax over references; it is kept in
`config.logit_bias` and the Localizer adds it to the scores it reports.
"""
from __future__ import annotations

import torch
from torch import nn

from ..config import OPENAI_MEAN, OPENAI_STD, ModelConfig
from .open_clip import OpenClipBackend
from .open_clip_weights import Resolved
from .timm_vit import TimmViT, check_vit, grid_for, pooling_name


def is_timm_tower(visual: nn.Module) -> bool:
    """Whether an open_clip image tower wraps a timm trunk."""
    from open_clip.timm_model import TimmModel

    return isinstance(visual, TimmModel)


class OpenClipTimmBackend(OpenClipBackend):
    """Engine view of an open_clip model with a timm ViT image tower (registered as "open_clip")."""

    def __init__(self, model: nn.Module, tokenizer, config: ModelConfig, device: torch.device):
        super().__init__(model, tokenizer, config, device)
        v = model.visual
        head = v.head if len(v.head) else None
        self.tower = TimmViT(v.trunk, head, config.grid_size, "visual.trunk", self.autocast_dtype)
        self.jacobian_chunk = self.tower.jacobian_chunk

    def trunk(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.tower.trunk(pixels)

    def target(self, stream: torch.Tensor) -> torch.Tensor:
        return self.tower.target(stream)

    def embed(self, stream, target, shift, cache=None) -> torch.Tensor:
        return self.tower.embed(stream, target, shift, cache)


def describe_timm(model: nn.Module, name: str, pretrained: str | None, image_size: int | None,
                  resolved: Resolved) -> ModelConfig:
    """Check the timm trunk is supported and build its ModelConfig."""
    v = model.visual
    trunk = v.trunk
    check_vit(trunk, name)
    size, native, patch = grid_for(trunk, image_size)
    view = TimmViT(trunk, None, (size[0] // patch[0], size[1] // patch[1]), label="visual.trunk")
    pp = getattr(v, "preprocess_cfg", {}) or {}
    bias = getattr(model, "logit_bias", None)
    text = getattr(model, "text", None)
    return ModelConfig(
        name=name, backend="open_clip", pretrained=pretrained, image_size=size, native_image_size=native,
        patch_size=patch, num_prefix_tokens=view.prefix, width=int(trunk.embed_dim),
        embed_dim=_output_dim(model), logit_scale=float(model.logit_scale.detach().exp()),
        mean=tuple(resolved.preprocess.get("mean", pp.get("mean", OPENAI_MEAN))),
        std=tuple(resolved.preprocess.get("std", pp.get("std", OPENAI_STD))),
        target_layer=view.target_layer, pooling=pooling_name(trunk),
        context_length=int(getattr(model, "context_length", 0) or getattr(text, "context_length", 77)),
        default_templates=tuple(resolved.extras["templates"]) if "templates" in resolved.extras else None,
        default_vocab=tuple(resolved.extras["classes"]) if "classes" in resolved.extras else None,
        logit_bias=float(bias.detach()) if bias is not None else 0.0,
    )


def _output_dim(model: nn.Module) -> int:
    """Size of the image embedding: the last projection of the head, else the trunk's width."""
    v = model.visual
    for layer in reversed(list(v.head.modules())):
        if isinstance(layer, nn.Linear):
            return int(layer.out_features)
    head = v.trunk.head
    return int(head.out_features) if isinstance(head, nn.Linear) else int(v.trunk.num_features)
