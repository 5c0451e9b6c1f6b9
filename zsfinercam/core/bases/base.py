"""The contract of a CAM base: how the engine's gradients become maps, on torch or in Triton."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from .. import kernel_choice, kernels
from ..shift import AttentionRecord


@dataclass(frozen=True)
class TokenGradients:
    """What the engine gives a base that needs per-token gradients (`CamBase.token_gradients`).

    Attributes:
        record: the pooling attention `shift.TokenRequest` recorded; None when `grad` is
            dO/dA itself (a tower without the attention shortcut).
        grad: dO/do (B, M, L, H * hd) at the attention output, or dO/dA (B, M, N, D) when
            `record` is None.
    """

    record: AttentionRecord | None
    grad: torch.Tensor


class CamBase(ABC):
    """A CAM base: what turns gradients into maps (pytorch-grad-cam's `base_method`).

    Subclasses set the class attributes and register with `registry.register_base(name)`,
    which sets `name`. Gradients are a (B, M, D) tensor of channel weights (the token-mean of
    dO/dA) when `token_gradients` is False, else `TokenGradients`.
    """

    name: ClassVar[str]  # the registry's name, what options and files say ("hirescam")
    title: ClassVar[str]  # display name ("HiResCAM"): figure rows, legends
    short: ClassVar[str]  # a short display name ("HiRes"), for "Finer - HiRes"
    token_gradients: ClassVar[bool]  # needs dO/dA per patch token (`Backend.token_gradients`)
    reference: ClassVar[str]  # the pytorch-grad-cam class it equals (tests, benchmarks)

    def maps(self, gradients: Any, patches: torch.Tensor, *, impl: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
        """Raw ReLU'd maps and their per-map min-max normalisation, both float32 (B, M, N), detached.

        Args:
            gradients: see the class docstring.
            patches: A's patch tokens (B, N, D), the ones the gradients reach, in order.
            impl: "auto" (Triton on CUDA where it imports), "torch" (the reference) or
                "triton" (raises `kernel_choice.TritonUnavailableError` saying why where it cannot run).
        """
        with torch.no_grad():  # a record holds the model's projection weights
            if kernel_choice.use_triton(impl, patches):
                return self.maps_triton(gradients, patches)
            return self.torch_maps(gradients, patches)

    def torch_maps(self, gradients: Any, patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`maps` on torch: the ReLU of `signed`, then `kernels.minmax`."""
        raw = self.signed(gradients, patches.float()).clamp_min_(0)
        return raw, kernels.minmax(raw)

    @abstractmethod
    def signed(self, gradients: Any, patches: torch.Tensor) -> torch.Tensor:
        """The torch reference: signed float32 maps (B, M, N) before the ReLU; `patches` float32."""

    @abstractmethod
    def maps_triton(self, gradients: Any, patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`maps` in Triton (CUDA, or the interpreter), equal to the reference up to float rounding."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


def scaled(x: torch.Tensor, dims: tuple[int, ...], dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(x / c cast to `dtype`, c): c the largest magnitude over `dims` (kept), at least float32's tiny.

    Kernel operands are scaled so that tiny gradients neither underflow nor large features
    overflow float16; maps are positively homogeneous in each operand, so multiplying the
    raw map by the scales afterwards is exact up to rounding."""
    scale = x.abs().amax(dim=dims, keepdim=True).float().clamp_min(torch.finfo(torch.float32).tiny)
    return (x.float() / scale).to(dtype), scale
