"""HiResCAM: every token's channels weighed by its own gradient (Draelos and Carin, 2020)."""
from __future__ import annotations

import torch

from .. import kernel_choice, kernels
from . import attention
from .base import CamBase, TokenGradients, scaled
from .registry import register_base


@register_base("hirescam")
class HiResCAM(CamBase):
    """map_t = sum_c dO/dA_tc A_tc, from the pooling attention's record without forming dO/dA.

    Triton: the regrouping of `attention` (one (B, N, L * H * hd) feature tensor per image,
    objective-free), then Grad-CAM's kernel (`kernels.token_maps`) over it: one launch for all
    M maps with the ReLU / min-max epilogue. Given dO/dA itself (a tower without the attention
    shortcut, `TokenGradients.record` None) both paths take the product in torch: the
    gradient is already in memory.
    """

    title, short = "HiResCAM", "HiRes"
    token_gradients = True
    reference = "HiResCAM"

    def signed(self, gradients: TokenGradients, patches: torch.Tensor) -> torch.Tensor:
        if gradients.record is None:
            return (gradients.grad.float() * patches[:, None]).sum(dim=-1)
        return attention.hirescam_signed(gradients.record, gradients.grad, patches)

    def maps_triton(self, gradients: TokenGradients, patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        record = gradients.record
        if record is None:
            return self.torch_maps(gradients, patches)
        dtype = kernel_choice.operand_dtype(patches, gradients.grad, record.v)
        features, weights = attention.hirescam_operands(record, gradients.grad, patches.float())
        features, feature_scale = scaled(features, (1, 2), dtype)  # per image
        weights, weight_scale = scaled(weights, (2,), dtype)  # per map
        raw, norm = kernels.token_maps(features, weights, impl="triton")
        return raw.mul_(weight_scale * feature_scale), norm
