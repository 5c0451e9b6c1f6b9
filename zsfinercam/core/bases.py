"""Element-wise CAM bases from the gradient at the pooling attention's output (issue 16).

Grad-CAM needs only the token-mean of dO/dA (the shift trick). HiResCAM and Layer-CAM need
dO/dA per patch token t:

    HiResCAM   map_t = sum_c  dO/dA_tc  A_tc
    Layer-CAM  map_t = sum_c  ReLU(dO/dA_tc)  A_tc

(pytorch-grad-cam's `HiResCAM` and `LayerCAM`, before their ReLU and min-max.) Patch tokens
reach the pooled output only through the pooling attention's keys and values, both linear
in A. Per head h and query l, with scaled queries q_l, weights w_lt = softmax_t(q_l . k_t),
output o_l = sum_t w_lt v_t and g_l = dO/do_l (what `TokenRequest` gives), the attention
backward is closed-form:

    dO/dv_t = sum_l w_lt g_l
    dO/dk_t = sum_l s_lt q_l,      s_lt = dO/d(q_l . k_t) = w_lt (g_l . v_t - g_l . o_l)
    dO/dA_t = dO/dk_t W_k + dO/dv_t W_v = sum_{l,h} s_lht P_lh + w_lht R_lh

with P_lh = q_lh W_k[h] (D, once per image) and R_lh = g_lh W_v[h] (D, once per objective).
So dO/dA costs O(M L H N D) for M objectives, N patch tokens, L queries, H heads and width D,
not the O(M N D^2) of projecting dO/dk and dO/dv back through W_k, W_v; a CLS or MAP pool has
L = 1. HiResCAM skips dO/dA: map_t = sum_{l,h} s_lht (P_lh . A_t) + w_lht (R_lh . A_t).
Any position embedding added to the keys' input drops out: the projections are applied to
A's patch tokens here, not read back from k or v.
"""
from __future__ import annotations

import torch

from .shift import AttentionRecord

ELEMENT_BASES = ("hirescam", "layercam")


def element_maps(record: AttentionRecord | None, grad: torch.Tensor, patches: torch.Tensor,
                 base: str) -> torch.Tensor:
    """Signed maps (B, M, N) of an element-wise `base`, before any ReLU.

    Args:
        record: the pooling attention `TokenRequest` recorded; None when `grad` is dO/dA itself.
        grad: dO/do (B, M, L, H * hd) at the attention output, or dO/dA (B, M, N, D) when
            `record` is None.
        patches: A's patch tokens (B, N, D), the ones the shift reaches, in order.
        base: "hirescam" or "layercam".
    """
    if base not in ELEMENT_BASES:
        raise ValueError(f"expected an element-wise base ({', '.join(ELEMENT_BASES)}), got {base!r}")
    with torch.no_grad():  # the record holds the model's projection weights
        patches = patches.float()
        if record is not None and base == "hirescam":
            return _hirescam(record, grad, patches)
        dA = grad if record is None else token_gradients(record, grad)  # ours to change in place
        if base == "layercam":
            dA.clamp_(min=0)
        return dA.mul_(patches[:, None]).sum(dim=-1)


def token_gradients(record: AttentionRecord, grad: torch.Tensor) -> torch.Tensor:
    """dO/dA (B, M, N, D) at the patch tokens, from dO/do (B, M, L, H * hd)."""
    scores, weights, keys, values = _backward_parts(record, grad)
    return torch.einsum("bmlhn,blhc->bmnc", scores, keys) + torch.einsum("blhn,bmlhc->bmnc", weights, values)


def _hirescam(record: AttentionRecord, grad: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
    scores, weights, keys, values = _backward_parts(record, grad)
    key_dots = torch.einsum("blhc,bnc->blhn", keys, patches)  # P_lh . A_t, once per image
    value_dots = torch.einsum("bmlhc,bnc->bmlhn", values, patches)  # R_lh . A_t
    return (scores * key_dots[:, None] + weights[:, None] * value_dots).sum(dim=(2, 3))


def _backward_parts(record: AttentionRecord, grad: torch.Tensor):
    """(s (B, M, L, H, N), w (B, L, H, N), P (B, L, H, D), R (B, M, L, H, D)) over the patch tokens."""
    heads = record.v.shape[2]
    g = grad.unflatten(-1, (heads, -1)).float()  # (B, M, L, H, hd)
    v = record.v[:, record.prefix:]
    w = record.weights[..., record.prefix:]
    g_v = torch.einsum("bmlhd,bnhd->bmlhn", g, v)
    g_o = torch.einsum("bmlhd,blhd->bmlh", g, record.output)
    scores = w[:, None] * (g_v - g_o[..., None])
    q = record.q.expand(g.shape[0], -1, -1, -1).float()
    keys = torch.einsum("blhd,hdc->blhc", q, record.wk.unflatten(0, (heads, -1)).float())
    values = torch.einsum("bmlhd,hdc->bmlhc", g, record.wv.unflatten(0, (heads, -1)).float())
    return scores, w, keys, values
