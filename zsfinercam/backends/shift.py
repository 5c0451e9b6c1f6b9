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
"""
from __future__ import annotations

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
        shift: (B, M, D), added to every token after the first `prefix`.
        prefix: leading tokens (CLS, registers) the shift does not reach.
        cache: the backend's scratch dict for these tokens, or None.

    Returns:
        (B, M, L, H * hd).
    """
    (_, (wk, _), (wv, _)) = proj
    q, v, base = _shared(queries, tokens, proj, heads, scale, cache)
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
