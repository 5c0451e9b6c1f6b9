"""A few attention rows over A, once per shift vector (docs/design.md, "Shifted attention").

Every backend's `embed` adds a shift s_m (D,) to every patch token of A and needs only the
attention rows of a few queries (the CLS query, or a pooling head's latent queries). Keys
and values are linear in A, so the shift moves every patch key by W_k s_m and every patch
value by W_v s_m, and nothing else (biases and prefix tokens stay put):

    scores_m[t]  = q . k_t + [t is a patch] q . (W_k s_m)       base + offset
    weights_m    = softmax_t(scores_m)
    out_m        = sum_t weights_m[t] v_t + (sum_{t patch} weights_m[t]) W_v s_m

The queries q, values v and base scores q . k do not depend on the shift: they are built
once without grad and kept in the backend's `cache` under `CACHE_KEY`. Only the score
offsets (B, M, L, H) and value offsets (B, M, H, hd) carry the gradient, so M objectives
cost M small vectors, not M attention passes. With no prefix tokens every key moves by
the same offset, which the softmax cancels exactly: only the value offset is kept then.

Element-wise CAM bases (HiResCAM, Layer-CAM) need dO/dA per token, not its sum. For them
the engine passes `embed` a `TokenRequest` instead of the shift tensor: `shifted_attention`
then runs the plain (unshifted) attention, adds a zero leaf to its output o (expanded to M
rows) and records what the closed-form attention backward needs (`AttentionRecord`); the
engine differentiates the objectives with respect to that leaf (`bases.py` does the rest).
A backend whose patch tokens reach the output by another route (`timm_vit`'s full path)
asks the request for a per-token leaf on A instead (`TokenRequest.token_leaf`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

CACHE_KEY = "shift_qvb"  # (q, v, base) in a backend's per-features cache

Projection = tuple[torch.Tensor, "torch.Tensor | None"]  # (weight (H * hd, D), bias or None)


def split_projection(weight: torch.Tensor, bias: torch.Tensor | None, parts: int) -> list[Projection]:
    """A fused in-projection ([q; k; v] or [k; v]) as one (weight, bias) pair per part."""
    biases = bias.chunk(parts) if bias is not None else (None,) * parts
    return list(zip(weight.chunk(parts), biases))


def shifted_attention(queries: torch.Tensor, tokens: torch.Tensor, proj: tuple[Projection, Projection, Projection],
                      heads: int, scale: float, shift: torch.Tensor, prefix: int,
                      cache: dict | None = None) -> torch.Tensor:
    """Multi-head attention of L queries over `tokens`, once per shift, before the output projection.

    Args:
        queries: (B or 1, L, D) inputs of the query projection (A's CLS row, a head's latents).
        tokens: (B, T, D) inputs of the key/value projections (A, unshifted).
        proj: (weight, bias) of the query, key and value projections.
        heads: number of attention heads H.
        scale: factor on the projected queries (usually hd ** -0.5).
        shift: (B, M, D), added to every token after the first `prefix`; or a `TokenRequest`
            (no shift: the plain attention, recorded, with the request's leaf added to it).
        prefix: leading tokens (CLS, registers) the shift does not reach.
        cache: the backend's scratch dict for these tokens, or None.

    Returns:
        (B, M, L, H * hd).
    """
    (_, (wk, _), (wv, _)) = proj
    q, v, base = _shared(queries, tokens, proj, heads, scale, cache)
    if isinstance(shift, TokenRequest):
        return shift.attend(AttentionRecord(q, v, base.softmax(dim=-1), wk, wv, prefix))
    batch, m, _ = shift.shape
    n_tokens = v.shape[1]
    dv = (shift @ wv.T).view(batch, m, 1, heads, -1)
    if prefix == 0:  # every key moves by the same offset, which the softmax cancels
        weights = base.softmax(dim=-1)[:, None].expand(-1, m, -1, -1, -1)
    else:
        dk = (shift @ wk.T).view(batch, m, heads, -1)
        offset = torch.einsum("blhd,bmhd->bmlh", q.expand(batch, -1, -1, -1), dk)
        offset = F.pad(offset[..., None].expand(-1, -1, -1, -1, n_tokens - prefix), (prefix, 0))
        weights = (base[:, None] + offset).softmax(dim=-1)  # (B, M, L, H, T)
    out = torch.einsum("bmlht,bthd->bmlhd", weights, v) + weights[..., prefix:].sum(-1, keepdim=True) * dv
    return out.flatten(-2)


def _shared(queries, tokens, proj, heads, scale, cache) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(q (B or 1, L, H, hd), v (B, T, H, hd), base (B, L, H, T)): the shift-free part, cached."""
    if cache is not None and CACHE_KEY in cache:
        return cache[CACHE_KEY]
    (wq, bq), (wk, bk), (wv, bv) = proj
    with torch.no_grad():
        q = F.linear(queries, wq, bq).unflatten(-1, (heads, -1)) * scale
        k = F.linear(tokens, wk, bk).unflatten(-1, (heads, -1))
        v = F.linear(tokens, wv, bv).unflatten(-1, (heads, -1))
        base = torch.einsum("blhd,bthd->blht", q.expand(k.shape[0], -1, -1, -1), k)
    if cache is not None:
        cache[CACHE_KEY] = (q, v, base)
    return q, v, base


@dataclass
class AttentionRecord:
    """One image batch's pooling attention at zero shift, as `TokenRequest` records it.

    Shapes: q (B or 1, L, H, hd) scaled queries; v (B, T, H, hd) values; weights (B, L, H, T)
    softmax weights; wk, wv (H * hd, D) key/value projection weights; the first `prefix`
    tokens are not patch tokens (the shift does not reach them).
    """

    q: torch.Tensor
    v: torch.Tensor
    weights: torch.Tensor
    wk: torch.Tensor
    wv: torch.Tensor
    prefix: int

    @property
    def output(self) -> torch.Tensor:
        """o (B, L, H, hd): the attention output before the out-projection."""
        return torch.einsum("blht,bthd->blhd", self.weights, self.v)

    def select(self, rows: slice) -> "AttentionRecord":
        """The record of images `rows` (queries shared by the batch stay as they are)."""
        q = self.q if self.q.shape[0] == 1 else self.q[rows]
        return AttentionRecord(q, self.v[rows], self.weights[rows], self.wk, self.wv, self.prefix)


class TokenRequest:
    """Passed to a backend's `embed` in place of the shift: asks for per-token gradients.

    After `embed`, `leaf` is the zero tensor the objectives are differentiated against, and
    `record` says what it is: an `AttentionRecord` when the leaf (B, M, L, H * hd) was added to
    the pooling attention's output, None when it was added to A's patch tokens (B, M, N, D).

    Args:
        rows: M, the number of objectives (or Jacobian rows) per image.
    """

    def __init__(self, rows: int):
        self.rows = rows
        self.leaf: torch.Tensor | None = None
        self.record: AttentionRecord | None = None

    def attend(self, record: AttentionRecord) -> torch.Tensor:
        """The plain attention output (B, M, L, H * hd) plus a zero leaf, recorded."""
        self.record = record
        out = record.output.flatten(-2)
        self.leaf = out.new_zeros(out.shape[0], self.rows, *out.shape[1:], requires_grad=True)
        return out[:, None] + self.leaf

    def token_leaf(self, patches: torch.Tensor) -> torch.Tensor:
        """A zero leaf (B, M, N, D) to add to the patch tokens (B, N, D) of A, M copies each."""
        self.record = None
        self.leaf = patches.new_zeros(patches.shape[0], self.rows, *patches.shape[1:], requires_grad=True)
        return self.leaf
