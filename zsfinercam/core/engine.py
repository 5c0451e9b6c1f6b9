"""The fast path (docs/design.md, "The fast path"): trunk once without grad, all objectives from one backward.

    pixels -> backend.trunk -> stream x -> backend.target -> A
    (x, A, shift) -> backend.embed -> e -> normalise -> z = s e T^T -> objectives O
    (a trained linear probe skips the normalisation: z = e T^T, its bias folded into e and T)
    w = (1/N) dO/dshift   (= the token-mean of dO/dA, Grad-CAM's channel weights: "The shift trick")
    maps = ReLU(A_patch w^T)

Two ways to get w, equal up to float rounding:
- direct: one shift vector per objective, one ordinary backward for all of them (exact only because
  row m of `embed` depends on shift[:, m] alone: "One backward for all objectives");
- Jacobian: G = (1/N) d normalize(e) / dshift, built once per image (E backward rows),
  then w = (dO/d e_n) G for any new prompts: text encoding plus small matrix products
  ("The per-image Jacobian").

CAM bases are objects (`bases`): Grad-CAM takes w; element-wise bases (HiResCAM, Layer-CAM)
need dO/dA per token. `embed` gets a `TokenRequest` instead of the shift: the gradient at the
pooling attention's output o comes from one backward for all objectives, and the attention
backward is done in closed form (`bases.attention`).
Their Jacobian J_o = d normalize(e) / do (B, E, L * H * hd) is kept beside G, so new
prompts on cached features cost u J_o and the closed form. Towers without the attention
shortcut (timm's full path) give dO/dA directly and always take the direct path.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .shift import AttentionRecord, TokenRequest
from .bases import get_base, list_bases
from .bases.base import TokenGradients
from .objectives import Objective, objective_scores
from ..errors import UsageError

if TYPE_CHECKING:
    from ..backends import Backend

JACOBIAN_CHUNK = 256  # shift rows per backward when building G; bounds memory
_ATTENTION_KEY = "reaches_attention"  # feats.cache: whether embed serves a TokenRequest at the attention


@dataclass(eq=False)
class ImageFeatures:
    """What the trunk produced for a batch of images; pass it to locate() to skip the trunk.

    The Jacobian needed for new prompts is built on first use and kept here.
    """

    stream: torch.Tensor  # (B, T, D) residual stream entering the last block
    target: torch.Tensor  # (B, T, D) target activation A (all tokens)
    embedding: torch.Tensor  # (B, E) unnormalised image embedding
    grid: tuple[int, int]  # patch grid (h, w)
    num_prefix_tokens: int
    images: list[np.ndarray]  # original images (H, W, 3) uint8, for rendering
    sources: list[str]  # where each image came from (file path or a label)
    model_key: str  # the backend that produced these features
    jacobian: torch.Tensor | None = field(default=None, repr=False)  # (B, E, D), built on demand
    cache: dict = field(default_factory=dict, repr=False)  # the backend's shift-independent work
    from_list: bool = False  # made from a list of images: locate_many then returns a list per image
    # J_o (B, E, L * H * hd) and the attention it belongs to, for element-wise bases; on demand
    output_jacobian: tuple[torch.Tensor, AttentionRecord] | None = field(default=None, repr=False)
    # zoom windows' features by (image index, (x0, y0, x1, y1)), kept for new prompts (zsfinercam.zoom)
    windows: dict = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return self.stream.shape[0]

    def __repr__(self) -> str:
        jacobian = "built" if self.jacobian is not None else "not built"
        return (f"ImageFeatures({len(self)} image(s) {', '.join(map(str, self.sources))}, grid {self.grid}, "
                f"jacobian {jacobian})")

    def __getitem__(self, i: int) -> "ImageFeatures":
        """Features of image i alone (a view, sharing memory); negative i counts from the end."""
        i = range(len(self))[i]  # an IndexError out of range, never empty features
        sl = slice(i, i + 1)
        jac = None if self.jacobian is None else self.jacobian[sl]
        out_jac = None if self.output_jacobian is None else (self.output_jacobian[0][sl],
                                                             self.output_jacobian[1].select(sl))
        return ImageFeatures(self.stream[sl], self.target[sl], self.embedding[sl], self.grid,
                             self.num_prefix_tokens, self.images[sl], self.sources[sl], self.model_key, jac,
                             output_jacobian=out_jac)

    @property
    def patch_tokens(self) -> torch.Tensor:
        """A without prefix tokens: (B, N, D)."""
        return self.target[:, self.num_prefix_tokens:]


def encode(backend: Backend, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
    """Stream, target activation, image embedding (all without grad) and the backend's cache."""
    stream = backend.trunk(pixels)
    target = backend.target(stream)
    cache: dict = {}
    with torch.no_grad():
        zero = stream.new_zeros(stream.shape[0], 1, stream.shape[-1])
        embedding = backend.embed(stream, target, zero, cache)[:, 0]
    return stream, target, embedding, cache


def logits(embedding: torch.Tensor, text: torch.Tensor, scale: float | None) -> torch.Tensor:
    """z = s * normalize(e) @ T^T for unnormalised image embeddings (..., E) and normalised text (K, E).

    `scale` None (`Backend.logit_scale` of a linear probe) means the plain linear head z = e @ T^T.
    """
    return _head(_head_features(embedding, scale), text, scale)


def _head_features(embedding: torch.Tensor, scale: float | None) -> torch.Tensor:
    """What the head's rows are dotted with: normalize(e), or e itself for a linear probe (scale None)."""
    return embedding if scale is None else F.normalize(embedding, dim=-1)


def _head(features: torch.Tensor, text: torch.Tensor, scale: float | None) -> torch.Tensor:
    """z from `_head_features`: s * features @ T^T, or features @ T^T for a linear probe."""
    return (features if scale is None else scale * features) @ text.T


def maps(
    backend: Backend,
    feats: ImageFeatures,
    text: torch.Tensor,
    objectives: Sequence[Sequence[Objective]],
    *,
    base: str,
    use_jacobian: bool = False,
    impl: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw ReLU'd maps and their min-max normalisation (B, M, h, w) of every objective, for a CAM `base`.

    The base object (`bases.get_base`) says which gradients it needs: channel weights
    (`channel_weights`) or per-token gradients (`token_gradients`); it turns them into maps.
    `use_jacobian` reuses (or builds) the per-image Jacobian of those gradients; `impl` picks
    the base's torch or Triton path ("auto", "torch", "triton"; `bases.base.CamBase.maps`).
    """
    cam = get_base(base)
    if not cam.token_gradients:
        gradients = channel_weights(backend, feats, text, objectives, use_jacobian=use_jacobian)
    elif backend.token_gradients:
        gradients = token_gradients(backend, feats, text, objectives, use_jacobian=use_jacobian)
    else:
        others = [name for name in list_bases() if not get_base(name).token_gradients]
        raise UsageError(f"the {backend.name} backend gives no per-token gradients, which the {base} base needs; "
                         f"use base={others[0]!r} (--base {others[0]}), or let its embed serve shift.TokenRequest")
    return _on_grid(feats, cam.maps(gradients, feats.patch_tokens, impl=impl))


def token_gradients(backend: Backend, feats: ImageFeatures, text: torch.Tensor,
                    objectives: Sequence[Sequence[Objective]], *, use_jacobian: bool = False) -> TokenGradients:
    """The gradient of every objective at the pooling attention's output (with its record), or at
    A's patch tokens for towers without the attention shortcut: what element-wise bases take."""
    if use_jacobian and _reaches_attention(backend, feats):
        matrix, record = output_jacobian(backend, feats)
        u = head_gradient(feats.embedding, text, backend.logit_scale, objectives)
        grad = torch.einsum("bme,bef->bmf", u, matrix).unflatten(-1, (record.q.shape[1], -1))
        return TokenGradients(record, grad)
    request = TokenRequest(len(objectives[0]))
    with torch.enable_grad():
        z = logits(_embed(backend, feats, request), text, backend.logit_scale)
        (grad,) = torch.autograd.grad(objective_scores(z, objectives).sum(), request.leaf)
    return TokenGradients(request.record, grad)


def _embed(backend: Backend, feats: ImageFeatures, request: TokenRequest) -> torch.Tensor:
    """embed with a TokenRequest, refused when the backend never served it."""
    e = backend.embed(feats.stream, feats.target, request, feats.cache)
    if request.leaf is None:
        raise ValueError(f"backend {backend.name!r} cannot give per-token gradients: its embed neither "
                         "pools through shift.shifted_attention nor asks the request for a token leaf")
    return e


def _reaches_attention(backend: Backend, feats: ImageFeatures) -> bool:
    """Whether embed serves a TokenRequest at the pooling attention (else: on A's tokens, full path)."""
    if _ATTENTION_KEY not in feats.cache:
        request = TokenRequest(1)
        with torch.no_grad():
            _embed(backend, feats[0], request)
        feats.cache[_ATTENTION_KEY] = request.record is not None
    return feats.cache[_ATTENTION_KEY]


def channel_weights(
    backend: Backend,
    feats: ImageFeatures,
    text: torch.Tensor,
    objectives: Sequence[Sequence[Objective]],
    *,
    use_jacobian: bool = False,
) -> torch.Tensor:
    """Grad-CAM channel weights w (B, M, D) of every objective: token-mean of dO/dA over patches."""
    if use_jacobian:
        u = head_gradient(feats.embedding, text, backend.logit_scale, objectives)
        return torch.einsum("bme,bed->bmd", u, jacobian(backend, feats))
    batch, _, width = feats.target.shape
    shift = feats.target.new_zeros(batch, len(objectives[0]), width, requires_grad=True)
    with torch.enable_grad():
        z = logits(backend.embed(feats.stream, feats.target, shift, feats.cache), text, backend.logit_scale)
        # one backward for all: exact because row m of embed depends on shift[:, m] alone
        (grad,) = torch.autograd.grad(objective_scores(z, objectives).sum(), shift)
    return grad / _num_patches(feats)  # d/dshift sums over the N patches; / N gives Grad-CAM's token mean


def head_gradient(embedding: torch.Tensor, text: torch.Tensor, scale: float | None,
                  objectives: Sequence[Sequence[Objective]]) -> torch.Tensor:
    """u = dO/d normalize(e) (dO/de for a linear probe, scale None), shape (B, M, E)."""
    e_n = _head_features(embedding.detach(), scale)
    e_n = e_n[:, None].expand(-1, len(objectives[0]), -1).clone().requires_grad_(True)
    with torch.enable_grad():
        z = _head(e_n, text, scale)
        (u,) = torch.autograd.grad(objective_scores(z, objectives).sum(), e_n)
    return u


def jacobian(backend: Backend, feats: ImageFeatures) -> torch.Tensor:
    """G (B, E, D): token-mean over patches of d normalize(e) / dA (de / dA for a linear probe).

    Built once and kept on feats. A backend may bound the rows per backward with its
    `jacobian_chunk` (towers whose embed runs a whole block per row).
    """
    if feats.jacobian is None:
        batch, _, width = feats.target.shape

        def shifts(rows: int):
            shift = feats.target.new_zeros(batch, rows, width, requires_grad=True)
            return shift, lambda: shift

        feats.jacobian = _embedding_jacobian(backend, feats, shifts) / _num_patches(feats)
    return feats.jacobian


def output_jacobian(backend: Backend, feats: ImageFeatures) -> tuple[torch.Tensor, AttentionRecord]:
    """(J_o (B, E, L * H * hd), the attention's record): d normalize(e) / do at the pooling attention's
    output o (de / do for a linear probe), for element-wise bases. Built once and kept on feats.

    Only for backends whose embed serves a `TokenRequest` at the attention (`_reaches_attention`).
    """
    if feats.output_jacobian is None:
        requests = []

        def requested(rows: int):
            requests.append(TokenRequest(rows))
            return requests[-1], lambda: requests[-1].leaf

        matrix = _embedding_jacobian(backend, feats, requested).flatten(2)
        feats.output_jacobian = (matrix, requests[0].record)
    return feats.output_jacobian


def _embedding_jacobian(backend: Backend, feats: ImageFeatures, leaf_rows) -> torch.Tensor:
    """d normalize(e) / d leaf (B, E, *leaf's shape after its rows), E backward rows in chunks.

    `leaf_rows(rows)` gives (what embed takes as the shift, a function returning the leaf to
    differentiate against once embed has run). A backend may bound the rows per backward with
    its `jacobian_chunk` (towers whose embed runs a whole block per row).
    """
    batch, dim = feats.embedding.shape
    chunk = backend.jacobian_chunk or JACOBIAN_CHUNK
    rows = []
    for start in range(0, dim, chunk):
        idx = torch.arange(start, min(start + chunk, dim), device=feats.target.device)
        shift, leaf = leaf_rows(len(idx))
        with torch.enable_grad():
            e_n = _head_features(backend.embed(feats.stream, feats.target, shift, feats.cache), backend.logit_scale)
            picked = e_n.gather(-1, idx.view(1, -1, 1).expand(batch, -1, 1))  # row j keeps component j
            (grad,) = torch.autograd.grad(picked.sum(), leaf())
        rows.append(grad)
    return torch.cat(rows, dim=1)


def _num_patches(feats: ImageFeatures) -> int:
    return feats.grid[0] * feats.grid[1]


def token_maps(feats: ImageFeatures, weights: torch.Tensor, impl: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Grad-CAM's raw ReLU'd maps and their per-map min-max normalisation from channel weights
    (B, M, D), both (B, M, h, w) float32."""
    return _on_grid(feats, get_base("gradcam").maps(weights, feats.patch_tokens, impl=impl))


def _on_grid(feats: ImageFeatures, maps: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, M, N) maps as (B, M, h, w)."""
    return tuple(m.reshape(*m.shape[:2], *feats.grid) for m in maps)
