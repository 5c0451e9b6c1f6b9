"""Grad-CAM: every token's channels weighed by the token-mean gradient (Selvaraju et al., 2017)."""
from __future__ import annotations

import torch

from .. import kernel_choice, kernels
from .base import CamBase, scaled
from .registry import register_base


@register_base("gradcam")
class GradCAM(CamBase):
    """map_t = sum_c w_c A_tc with w = mean_t dO/dA_t, the channel weights the shift trick gives.

    Triton: `kernels.token_maps`, one launch (a batched GEMM with the ReLU / min-max epilogue).
    """

    title, short = "Grad-CAM", "Grad"
    token_gradients = False
    reference = "GradCAM"

    def signed(self, gradients: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
        return torch.bmm(gradients.float(), patches.transpose(1, 2))

    def maps_triton(self, gradients: torch.Tensor, patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dtype = kernel_choice.operand_dtype(patches, gradients)
        weights, scale = scaled(gradients, (-1,), dtype)  # per map: token-mean gradients are tiny
        raw, norm = kernels.token_maps(patches.to(dtype), weights, impl="triton")
        return raw.mul_(scale), norm
