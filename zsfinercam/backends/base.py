"""The Backend contract: what a backend provides to the engine and to every other caller.

A backend wraps one loaded image-text model and exposes the pieces of its image
tower that the fast path needs, so the engine never special-cases a model:

    pixels --trunk--> stream x (entering the last block, no grad)
    x --target--> A (the activation Finer-CAM weights, all tokens)
    (x, A, shift) --embed--> image embeddings, one per shift vector

`shift` (B, M, D) is added to every patch token of A. The gradient of an
objective with respect to shift[b, m] is the SUM over patch tokens of the
gradient with respect to A; divided by the number of patch tokens N it is their
mean, which is Grad-CAM's channel weights (docs/design.md, "The shift trick"). A backend may
compute only what reaches the pooled output (for CLS pooling: the CLS query's
attention row and the CLS MLP). Row m of `embed`'s output may depend on `shift[:, m]`
only: the engine sums all M objectives and takes one backward.

The contract, member by member (tensors live on `device` unless said otherwise;
none of the methods changes the wrapped model, its grad flags, train/eval mode or hooks):

Attributes:
    name: the registry name (`register_backend` sets it).
    config: the frozen `ModelConfig` (sizes, pooling, mean/std, logit scale, target layer).
    device: where the model and every returned tensor live.
    tokenizer: `texts -> ids (n, context_length)`, or None where there is no text tower (a
        linear probe). Optional extras read by `text.py`: `encode(text) -> ids` without
        special tokens and `num_special_tokens` (for the prompt-length warning).
    autocast_dtype: the dtype the image tower runs in under autocast (bfloat16 on CUDA for
        the built-ins, `trunk_dtype`); None: as stored. `trunk` and `encode_pixels` use it.
    jacobian_chunk: shift rows per backward when the engine builds the Jacobian; None: the
        engine's default. Set where `embed` runs a whole block per row, so the Localizer
        prefers the direct path on cached features.
    token_gradients: whether `embed` serves a `shift.TokenRequest` (see `embed`), which the
        element-wise bases need; default False: such a backend gives Grad-CAM maps (the default
        base falls back to "gradcam" there, and an explicit "hirescam"/"layercam" is refused).

Methods (abstract unless a default is named):
    from_pretrained(name, *, pretrained, model_config, device, image_size) -> Backend: load.
    from_model(model, tokenizer, *, name, image_size, **kw) -> Backend: wrap a model the caller
        holds, used as is; default: a UsageError (the backend cannot).
    tokenize(texts) -> (n, context_length) ids; encode_text(ids) -> (n, E) unnormalised
        float32, grad-free.
    trunk(pixels (B, 3, H, W)) -> stream (B, T, D) float32, grad-free (a normal tensor, not
        an inference tensor, so autograd can use it).
    target(stream) -> A (B, T, D), grad-free.
    embed(stream, A, shift (B, M, D), cache) -> (B, M, E) unnormalised float32, differentiable
        in `shift`; `cache` is a scratch dict tied to (stream, A). A backend that sets
        `token_gradients` also accepts a `shift.TokenRequest` as `shift` (per-token gradients for
        the element-wise bases HiResCAM and Layer-CAM: pass it to `shift.shifted_attention`, or
        add its `leaf` to A's patch tokens; docs/design.md, "Element-wise bases").
    encode_pixels(pixels) -> (B, E) unnormalised float32: the tower's plain forward, what the
        model's own `encode_image` gives (= `embed` at zero shift), with the trunk's autocast.
        It runs under the CALLER's grad mode (wrap it in `torch.no_grad()` for a plain forward;
        with grad on, hooks on `target_module()` see A and its gradient). Default: trunk,
        target and embed at zero shift.
    encode_kept(pixels (B, 3, H, W), keep (B, S, n)) -> (B, S, E) unnormalised float32, grad-free: the
        plain forward of image b with only the patch tokens `keep[b, s]` (indices in 0..N-1, row-major
        on the patch grid) and every prefix token (CLS, registers) kept, once per set s. The others are
        dropped right after the position embedding is added, so no block sees them and nothing stands
        in their place; the pooling is the model's own over what is left (CLS, attention pool, or the
        mean of the kept patches). For per-map faithfulness (`core.removal`); build the sequences
        with `kept_sequences`. Default: a UsageError (this backend cannot drop tokens).
    target_module() -> nn.Module whose output is A during `encode_pixels` (`config.target_layer`),
        for hook-based references such as pytorch-grad-cam; default: `config.target_layer`
        looked up in the modules the backend holds.
    head_rows(concepts, templates) -> (K, E) rows of a trained linear head, or None (default:
        zero-shot text head); logit_scale -> s, or None for a linear head (default: the config's).
    fingerprint() -> str that changes whenever the text side (or the head) does, for the disk
        text cache and batch settings; default: a digest of the class, `config` and the state
        of every module the backend holds (`modules()`), computed once.
    modules() -> the outermost torch modules the backend holds (attributes, and attributes of held
        plain objects such as towers); used by the defaults above and by `randomized`.
    randomized(seed) -> Backend: an independent copy whose weight matrices (every parameter
        with ndim >= 2) are redrawn, for the model-randomisation sanity baseline; the
        original is untouched and the copy's fingerprint is computed afresh (a linear probe's key is
        its head's, which the copy shares).
"""
from __future__ import annotations

import copy
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
    """One loaded image-text model, seen through the engine's eyes (the contract: module docstring)."""

    name: ClassVar[str]
    config: ModelConfig
    device: torch.device
    tokenizer: object | None = None
    autocast_dtype: torch.dtype | None = None
    jacobian_chunk: int | None = None
    token_gradients: ClassVar[bool] = False
    _fingerprint: str | None = None  # `fingerprint`'s memo

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

    @classmethod
    def from_model(cls, model: nn.Module, tokenizer, *, name: str = "custom", image_size: int | None = None,
                   **kwargs) -> "Backend":
        """Wrap a model the caller already holds (used as is, never modified)."""
        raise UsageError(f"the {getattr(cls, 'name', cls.__name__)} backend cannot wrap a model you hold; "
                         "load one by name with Localizer.from_pretrained")

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

    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """Unnormalised image embeddings (B, E) of a plain forward (here: embed at zero shift)."""
        stream = self.trunk(pixels)
        target = self.target(stream)
        return self.embed(stream, target, stream.new_zeros(stream.shape[0], 1, stream.shape[-1]), {})[:, 0]

    def encode_kept(self, pixels: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Embeddings (B, S, E) of the image tower run on the prefix tokens and the patch tokens `keep`
        (B, S, n) only (the contract: module docstring); here refused."""
        raise UsageError(f"the {getattr(self, 'name', type(self).__name__)} backend cannot run its image tower "
                         "on a subset of patch tokens (Backend.encode_kept), which faithfulness needs; "
                         "drop faithfulness (--faithfulness off)")

    def target_module(self) -> nn.Module:
        """The module whose output is A (`config.target_layer`), found in the modules held."""
        path = self.config.target_layer
        for top in self.modules():
            try:
                return top.get_submodule(path)
            except AttributeError:
                continue
        raise UsageError(f"{self.config.name}: no module {path!r} in the modules this backend holds; "
                         "override Backend.target_module")

    @property
    def logit_scale(self) -> float | None:
        """s in z = s * cos(image, text); None for a linear probe (z = e @ T^T, no normalisation)."""
        return self.config.logit_scale if self.config.cosine_head else None

    def head_rows(self, concepts: list[str], templates=None) -> torch.Tensor | None:
        """Rows of a trained linear head for `concepts` (K, E); None for zero-shot (text) heads."""
        return None

    def fingerprint(self) -> str:
        """A key that changes whenever the text tower's weights do (for the text cache).

        Default: class, config and every held module's state (`modules()`), digested once.
        """
        if self._fingerprint is None:
            digest = hashlib.blake2b(digest_size=16)
            digest.update(f"{type(self).__module__}.{type(self).__qualname__}|{self.config!r}|".encode())
            for k, module in enumerate(self.modules()):
                digest.update(state_digest(module, f"{k}|", ()).encode())
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    def modules(self) -> list[nn.Module]:
        """The outermost torch modules held as attributes, or as attributes of held plain objects
        (a tower, a wrapped backend), each once, in attribute order; a module inside another is left out."""
        held = list(vars(self).values())
        held += [v for obj in held if not isinstance(obj, nn.Module) and hasattr(obj, "__dict__")
                 for v in vars(obj).values()]
        tops = list({id(v): v for v in held if isinstance(v, nn.Module)}.values())
        inner = {id(m) for top in tops for m in top.modules() if m is not top}
        return [top for top in tops if id(top) not in inner]

    def with_config(self, config) -> "Backend":
        """A shallow copy reading `config` (e.g. another logit scale): the weights are shared, this
        backend is untouched, and the copy's `fingerprint` is computed afresh."""
        clone = copy.copy(self)
        clone.config = config
        clone._fingerprint = None
        return clone

    def randomized(self, seed: int = 0) -> "Backend":
        """A deep copy whose weight matrices are redrawn (`redraw_matrices`); the tokenizer is shared."""
        clone = copy.deepcopy(self, memo={id(self.tokenizer): self.tokenizer})
        seen: set[int] = set()
        params = [p for m in clone.modules() for p in m.parameters() if id(p) not in seen and not seen.add(id(p))]
        redraw_matrices(params, seed)
        clone._fingerprint = None
        return clone


def redraw_matrices(params, seed: int = 0) -> None:
    """Replace, in place, every parameter with ndim >= 2 (weight matrices, embeddings, conv kernels)
    by Gaussian noise with the trained tensor's mean and std, so activations keep their scale;
    vectors (biases, norm gains, logit scale) are kept. Deterministic in `seed` and the order."""
    gen = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        for p in params:
            if p.ndim >= 2:
                noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
                p.copy_((noise * p.float().std() + p.float().mean()).to(p.dtype))


class TowerImage:
    """Mixin (before `Backend` in the bases) for backends that hand their image side to
    `self.tower`, an object with trunk/target/embed/encode_pixels/encode_kept/target_module and
    `jacobian_chunk` (e.g. `timm_vit.TimmViT`)."""

    tower: object

    def trunk(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.tower.trunk(pixels)

    def target(self, stream: torch.Tensor) -> torch.Tensor:
        return self.tower.target(stream)

    def embed(self, stream, target, shift, cache=None) -> torch.Tensor:
        return self.tower.embed(stream, target, shift, cache)

    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.tower.encode_pixels(pixels)

    def encode_kept(self, pixels: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        return self.tower.encode_kept(pixels, keep)

    def target_module(self) -> nn.Module:
        return self.tower.target_module()

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


def kept_sequences(tokens: torch.Tensor, keep: torch.Tensor, prefix: int) -> torch.Tensor:
    """(B * S, prefix + n, D): per image b and set s, the `prefix` leading tokens of `tokens` (B, T, D)
    followed by its patch tokens `keep[b, s]` (keep: (B, S, n) indices among the T - prefix patches)."""
    batch, sets, n = keep.shape
    index = keep.to(tokens.device)[..., None].expand(-1, -1, -1, tokens.shape[-1])
    patches = tokens[:, None, prefix:].expand(-1, sets, -1, -1).gather(2, index)
    return torch.cat([tokens[:, None, :prefix].expand(-1, sets, -1, -1), patches], dim=2).flatten(0, 1)


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
