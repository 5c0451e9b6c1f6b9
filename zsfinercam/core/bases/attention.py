"""The closed-form backward of the pooling attention, shared by the element-wise bases.

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

For a kernel, HiResCAM regroups into one matrix product per image. With kappa_lht = P_lh . A_t
and V'_t = W_v A_t (no bias), R_lh . A_t = g_lh . V'_th and s_lht = w_lht g_lh . (v_th - o_lh), so

    map_t = sum_{l,h} g_lh . U_lht,   U_lht = w_lht (kappa_lht (v_th - o_lh) + V'_th),

that is map = g @ U^T: Grad-CAM's kernel (`kernels.token_maps`) over L * H * hd channels
instead of D (`hirescam_operands`). U is centred on the attention output o, which does not
depend on the objective: in half precision the difference g . v - g . o would otherwise be
formed after rounding, and a value component shared by all tokens (a value bias) cancels there.
"""
from __future__ import annotations

import torch

from ..shift import AttentionRecord


def input_gradients(record: AttentionRecord, grad: torch.Tensor) -> torch.Tensor:
    """dO/dA (B, M, N, D) at the patch tokens, from dO/do (B, M, L, H * hd)."""
    scores, weights, keys, values = backward_parts(record, grad)
    return torch.einsum("bmlhn,blhc->bmnc", scores, keys) + torch.einsum("blhn,bmlhc->bmnc", weights, values)


def hirescam_signed(record: AttentionRecord, grad: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
    """HiResCAM's signed maps (B, M, N) without forming dO/dA (the reference form above)."""
    scores, weights, keys, values = backward_parts(record, grad)
    key_dots = torch.einsum("blhc,bnc->blhn", keys, patches)  # P_lh . A_t, once per image
    value_dots = torch.einsum("bmlhc,bnc->bmlhn", values, patches)  # R_lh . A_t
    return (scores * key_dots[:, None] + weights[:, None] * value_dots).sum(dim=(2, 3))


def hirescam_operands(record: AttentionRecord, grad: torch.Tensor,
                      patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(features U (B, N, C), weights g (B, M, C)), C = L * H * hd, float32: HiResCAM's signed
    map is weights @ features^T (the regrouping above)."""
    heads = record.v.shape[2]
    g = _heads(grad, heads)  # (B, M, L, H, hd)
    w = record.weights[..., record.prefix:].float().permute(0, 3, 1, 2)  # (B, N, L, H)
    kappa = torch.einsum("blhc,bnc->bnlh", key_rows(record, g.shape[0]), patches)
    centred = record.v[:, record.prefix:, None].float() - record.output.float()[:, None]  # v - o (B, N, L, H, hd)
    v_free = (patches @ record.wv.float().T).unflatten(-1, (heads, -1))[:, :, None]  # V' (B, N, 1, H, hd)
    return (w[..., None] * (kappa[..., None] * centred + v_free)).flatten(2), g.flatten(2)


def backward_parts(record: AttentionRecord, grad: torch.Tensor):
    """(s (B, M, L, H, N), w (B, L, H, N), P (B, L, H, D), R (B, M, L, H, D)) over the patch tokens, float32."""
    heads = record.v.shape[2]
    g = _heads(grad, heads)
    v = record.v[:, record.prefix:].float()
    w = record.weights[..., record.prefix:].float()
    g_v = torch.einsum("bmlhd,bnhd->bmlhn", g, v)
    g_o = torch.einsum("bmlhd,blhd->bmlh", g, record.output.float())
    scores = w[:, None] * (g_v - g_o[..., None])
    values = torch.einsum("bmlhd,hdc->bmlhc", g, record.wv.unflatten(0, (heads, -1)).float())
    return scores, w, key_rows(record, g.shape[0]), values


def key_rows(record: AttentionRecord, batch: int) -> torch.Tensor:
    """P (B, L, H, D): every query's key-side projection q_lh W_k[h], float32."""
    heads = record.v.shape[2]
    q = record.q.expand(batch, -1, -1, -1).float()
    return torch.einsum("blhd,hdc->blhc", q, record.wk.unflatten(0, (heads, -1)).float())


def _heads(grad: torch.Tensor, heads: int) -> torch.Tensor:
    """dO/do (B, M, L, H * hd) as float32 (B, M, L, H, hd)."""
    return grad.unflatten(-1, (heads, -1)).float()
