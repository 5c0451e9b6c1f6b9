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

from .timm_vit import TimmViT, check_vit, vit_fields


def is_timm_tower(visual: nn.Module) -> bool:
    """Whether an open_clip image tower wraps a timm trunk."""
    from open_clip.timm_model import TimmModel

    return isinstance(visual, TimmModel)


def timm_tower(model: nn.Module, grid: tuple[int, int], autocast_dtype: torch.dtype | None) -> TimmViT:
    """The engine's view of the model's timm image tower: the trunk, then open_clip's head (if any)."""
    v = model.visual
    return TimmViT(v.trunk, v.head if len(v.head) else None, grid, autocast_dtype)


def timm_fields(model: nn.Module, name: str, image_size: int | None) -> dict:
    """Check the timm trunk is supported; the image fields of its ModelConfig (and the logit bias)."""
    check_vit(model.visual.trunk, name)
    bias = getattr(model, "logit_bias", None)
    return dict(**vit_fields(model.visual.trunk, image_size, "visual.trunk"), embed_dim=_output_dim(model),
                logit_bias=float(bias.detach()) if bias is not None else 0.0)


def _output_dim(model: nn.Module) -> int:
    """Size of the image embedding: the last projection of the head, else the trunk's width."""
    v = model.visual
    for layer in reversed(list(v.head.modules())):
        if isinstance(layer, nn.Linear):
            return int(layer.out_features)
    head = v.trunk.head
    return int(head.out_features) if isinstance(head, nn.Linear) else int(v.trunk.num_features)
