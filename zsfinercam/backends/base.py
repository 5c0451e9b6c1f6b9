"""What a backend provides to the engine.

A backend wraps one loaded image-text model and exposes the pieces of its image
tower that the fast path needs, so the engine never special-cases a model:

    pixels --trunk--> stream x (entering the last block, no grad)
    x --target--> A (the activation Finer-CAM weights, all tokens)
    (x, A, shift) --embed--> image embeddings, one per shift vector

`shift` (B, M, D) is added to every patch token of A. The gradient of an
objective with respect to shift[b, m] is the SUM over patch tokens of the
gradient with respect to A, which is all Grad-CAM's channel weights need
(DESIGN.md, fast path step 3). A backend may compute only what reaches the
pooled output (for CLS pooling: the CLS query's attention row and the CLS MLP).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch

from ..config import ModelConfig


class Backend(ABC):
    """One loaded image-text model, seen through the engine's eyes."""

    name: ClassVar[str]
    config: ModelConfig
    device: torch.device

    @classmethod
    @abstractmethod
    def from_pretrained(
        cls,
        name: str,
        *,
        pretrained: str | None,
        model_config: str | None,
        device: torch.device,
        image_size: int | None,
    ) -> "Backend":
        """Load weights and build the backend."""

    @abstractmethod
    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """Token ids (n, context_length)."""

    @abstractmethod
    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """Unnormalised text embeddings (n, E); grad-free."""

    @abstractmethod
    def trunk(self, pixels: torch.Tensor) -> torch.Tensor:
        """Residual stream (B, T, D) entering the last block; grad-free."""

    @abstractmethod
    def target(self, stream: torch.Tensor) -> torch.Tensor:
        """Target activation A (B, T, D) computed from the stream."""

    @abstractmethod
    def embed(self, stream: torch.Tensor, target: torch.Tensor, shift: torch.Tensor,
              cache: dict | None = None) -> torch.Tensor:
        """Unnormalised image embeddings (B, M, E) with shift (B, M, D) added to the patch tokens of A.

        `cache` is a scratch dict tied to this (stream, target): the backend may keep work
        that does not depend on the shift there (e.g. the last block's keys and values).
        """

    @property
    def logit_scale(self) -> float | None:
        """s in z = s * cos(image, text); None for a linear probe (z = e @ T^T, no normalisation)."""
        return self.config.logit_scale if self.config.normalize else None

    def head_rows(self, concepts: list[str], templates=None) -> torch.Tensor | None:
        """Rows of a trained linear head for `concepts` (K, E); None for zero-shot (text) heads."""
        return None

    def fingerprint(self) -> str:
        """A key that changes whenever the text tower's weights do (for the text cache)."""
        raise NotImplementedError
