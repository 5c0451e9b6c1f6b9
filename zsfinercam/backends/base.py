"""What a backend provides to the engine.

A backend wraps one loaded image-text model and exposes the pieces of its image
tower that the fast path needs, so the engine never special-cases a model:

    pixels --trunk--> stream x (entering the last block, no grad)
    x --target--> A (the activation Finer-CAM weights, all tokens)
    (x, A, shift) --embed--> image embeddings, one per shift vector

`shift` (B, M, D) is added to every patch token of A. The gradient of an
objective with respect to shift[b, m] is the SUM over patch tokens of the
gradient with respect to A, which is all Grad-CAM's channel weights need
(docs/design.md, "The shift trick"). A backend may compute only what reaches the
pooled output (for CLS pooling: the CLS query's attention row and the CLS MLP).
"""
from __future__ import annotations

import hashlib
import weakref
from abc import ABC, abstractmethod
from typing import ClassVar

import torch
from torch import nn

from ..config import ModelConfig
from ..errors import UsageError, WorkError

POS_CACHE_SIZE = 8  # resampled position embeddings kept by `resample_pos`
_POS_CACHE: dict[tuple, tuple[weakref.ref, torch.Tensor]] = {}


class Backend(ABC):
    """One loaded image-text model, seen through the engine's eyes."""

    name: ClassVar[str]
    config: ModelConfig
    device: torch.device
    # Shift rows per backward when the engine builds the Jacobian; None: the engine's default.
    # Set where embed runs a whole block per row, so the Localizer prefers the direct path
    # on cached features.
    jacobian_chunk: int | None = None

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
        return self.config.logit_scale if self.config.cosine_head else None

    def head_rows(self, concepts: list[str], templates=None) -> torch.Tensor | None:
        """Rows of a trained linear head for `concepts` (K, E); None for zero-shot (text) heads."""
        return None

    def fingerprint(self) -> str:
        """A key that changes whenever the text tower's weights do (for the text cache)."""
        raise NotImplementedError


class TowerImage:
    """Mixin (before `Backend` in the bases) for backends that hand their image side to
    `self.tower`, an object with trunk/target/embed and `jacobian_chunk` (e.g. `timm_vit.TimmViT`)."""

    tower: object

    def trunk(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.tower.trunk(pixels)

    def target(self, stream: torch.Tensor) -> torch.Tensor:
        return self.tower.target(stream)

    def embed(self, stream, target, shift, cache=None) -> torch.Tensor:
        return self.tower.embed(stream, target, shift, cache)

    @property
    def jacobian_chunk(self) -> int | None:
        return self.tower.jacobian_chunk


# helpers shared by the built-in backends ----------------------------------------
def trunk_dtype(device: torch.device) -> torch.dtype | None:
    """The dtype a trunk autocasts to on `device`: bfloat16 on CUDA, else None (as stored)."""
    return torch.bfloat16 if device.type == "cuda" else None


def autocast(device: torch.device, dtype: torch.dtype | None):
    """Autocast to `dtype` on `device`'s type; a disabled context for None."""
    if dtype is None:
        return torch.autocast("cpu", enabled=False)
    return torch.autocast(device.type, dtype=dtype)


def require_float32(model: nn.Module, name: str) -> None:
    """Refuse half-precision weights: the stream, target and embeddings run in float32 (the trunk
    autocasts to bfloat16 on CUDA by itself), and half weights would meet float32 activations."""
    dtypes = sorted({str(p.dtype) for p in model.parameters() if p.is_floating_point()} - {str(torch.float32)})
    if dtypes:
        raise UsageError(f"{name}: the model's weights are {', '.join(dtypes)}; zsfinercam runs it in float32 "
                         f"(and autocasts to bfloat16 on CUDA by itself): pass model.float()")


def check_not_degenerate(tokenizer) -> torch.Tensor:
    """Ids of two different texts, refused when equal: offline hubs can hand back a degenerate
    tokenizer that maps every text to one id (docs/design.md, "Tokenizers and weights offline")."""
    ids = tokenizer(["a photo of a cat.", "a photo of a dog."])
    if torch.equal(ids[0], ids[1]):
        raise WorkError("the tokenizer loaded maps different texts to the same tokens: it is not the model's "
                        "real tokenizer (offline hub?); pass a local model folder with --model local-dir:PATH")
    return ids


def state_digest(model: nn.Module, header: str, skip_prefixes: tuple[str, ...]) -> str:
    """blake2b of `header` and every state-dict entry whose key starts with none of `skip_prefixes`."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(header.encode())
    for key, tensor in model.state_dict().items():
        if not key.startswith(skip_prefixes):
            digest.update(key.encode())
            digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


def resample_pos(pe: torch.Tensor, grid: tuple[int, int], native: tuple[int, int], prefix: int,
                 antialias: bool = True) -> torch.Tensor:
    """A position embedding ((T, D) or (1, T, D)) resampled from the `native` patch grid to `grid`.

    timm's `resample_abs_pos_embed` (bicubic); the `prefix` leading rows are kept as they are.
    `antialias=False` gives the numbers of transformers' `interpolate_pos_encoding=True`; the
    two differ only when shrinking. Returned as is at the native grid; otherwise a grad-free
    tensor, kept for the next call until `pe` changes (a few entries at most).
    """
    grid, native = tuple(grid), tuple(native)
    if grid == native:
        return pe
    key = (id(pe), pe._version, grid, native, prefix, antialias)
    hit = _POS_CACHE.get(key)
    if hit is not None and hit[0]() is pe:
        return hit[1]
    from timm.layers import resample_abs_pos_embed

    # a normal float tensor whatever the caller's context (trunks call it under inference mode and autocast)
    with torch.inference_mode(False), torch.no_grad(), torch.autocast(pe.device.type, enabled=False):
        out = resample_abs_pos_embed(pe.detach().reshape(1, *pe.shape[-2:]), new_size=list(grid),
                                     old_size=list(native), num_prefix_tokens=prefix, antialias=antialias)
    out = out.reshape(*pe.shape[:-2], *out.shape[-2:])
    while len(_POS_CACHE) >= POS_CACHE_SIZE:
        _POS_CACHE.pop(next(iter(_POS_CACHE)))
    _POS_CACHE[key] = (weakref.ref(pe), out)
    return out
