"""Layer-CAM: every token's channels weighed by the positive part of its own gradient (Jiang et al., 2021)."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .. import kernel_choice, kernels
from ..kernels import finish_tile
from . import attention
from .base import CamBase, TokenGradients
from .registry import register_base

if TYPE_CHECKING:  # names used inside the kernel source; bound by kernels.jit_kernel
    import triton.language as tl


@register_base("layercam")
class LayerCAM(CamBase):
    """map_t = sum_c ReLU(dO/dA_tc) A_tc, dO/dA_t = sum_{l,h} s_lht P_lh + w_lht R_lh (`attention`).

    Triton: one launch for all M maps. Each program makes dO/dA for one map and a block of
    tokens, one (tokens x channels) tile at a time on chip, as two small matrix products over
    the L * H (query, head) pairs, [s, w] @ [P; R]; clamps it, dots it with A's tile and never
    writes it out; then the ReLU / min-max epilogue of `kernels.finish_tile`. What it reads is
    s (B, M, L * H, N) and R (B, M, L * H, D), D / (L * H) and N / (L * H) times smaller than
    the (B, M, N, D) gradient the torch path forms. Given dO/dA itself (`TokenGradients.record`
    None) both paths take the product in torch.
    """

    title, short = "Layer-CAM", "Layer"
    token_gradients = True
    reference = "LayerCAM"

    def signed(self, gradients: TokenGradients, patches: torch.Tensor) -> torch.Tensor:
        record = gradients.record
        if record is None:  # the caller's gradient: clamp a copy
            dA = gradients.grad.float().clamp(min=0)
        else:
            dA = attention.input_gradients(record, gradients.grad).clamp_(min=0)
        return dA.mul_(patches[:, None]).sum(dim=-1)

    def maps_triton(self, gradients: TokenGradients, patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        record = gradients.record
        if record is None:
            return self.torch_maps(gradients, patches)
        dtype = kernel_choice.operand_dtype(patches, gradients.grad, record.v)
        scores, weights, keys, values = attention.backward_parts(record, gradients.grad)
        (B, M), N, D = scores.shape[:2], patches.shape[1], patches.shape[2]
        # s and R are linear in the gradient: one scale per map for both (float16 on CUDA)
        scale = torch.maximum(scores.abs().amax(dim=(2, 3, 4)), values.abs().amax(dim=(2, 3, 4)))
        scale = scale.clamp_min(torch.finfo(torch.float32).tiny)[..., None]  # (B, M, 1)
        s, r = ((t.flatten(2, 3) / scale[..., None]).to(dtype).contiguous() for t in (scores, values))
        w, p, a = (t.to(dtype).contiguous() for t in (weights.flatten(1, 2), keys.flatten(1, 2), patches))
        cfg = _launch_config(patches.is_cuda)
        raw, norm = kernels.launch_maps(_layercam_kernel, patches.device, (B, M, N), cfg,
                                        s, r, w, p, a, s.shape[2], D,
                                        PRECISION="ieee", UPCAST=kernel_choice.upcast(dtype))
        return raw.mul_(scale), norm


def _launch_config(cuda: bool) -> dict[str, int]:
    """Tile sizes (tl.dot needs every side >= 16). On CUDA a (64 x 32) float32 gradient tile per
    program, not tuned (no GPU timing yet); the interpreter's cost is per program and loop step,
    so it takes wider token blocks."""
    if cuda:
        return {"BLOCK_M": 8, "BLOCK_N": 64, "BLOCK_K": 16, "BLOCK_D": 32, "num_warps": 4}
    return {"BLOCK_M": 16, "BLOCK_N": 128, "BLOCK_K": 16, "BLOCK_D": 64}


# --------------------------------------------------------------------------- kernel
# Grid (ceil(N / BLOCK_N), ceil(M / BLOCK_M), B). Contiguous operands, K = L * H:
# s (B, M, K, N), r (B, M, K, D), w (B, K, N), p (B, K, D), a (B, N, D). A program walks
# its BLOCK_M maps one at a time; for each, over D in BLOCK_D steps, it builds the
# (BLOCK_N, BLOCK_D) tile of dO/dA as s_m^T p + w^T r_m (K in BLOCK_K steps, fp32
# accumulate), clamps it at zero and reduces ReLU(dO/dA) * A over the tile's channels.


def _layercam_kernel(s_ptr, r_ptr, raw_ptr, norm_ptr, ws_ptr, M, N, w_ptr, p_ptr, a_ptr, K, D, s_ob, s_om,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
                     PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """One (BLOCK_M, BLOCK_N) tile of Layer-CAM's raw maps; the last tile of a map block also writes norm."""
    b = tl.program_id(2).to(tl.int64)
    offs_m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < N
    raw = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for i in range(0, tl.minimum(BLOCK_M, M - tl.program_id(1) * BLOCK_M)):  # this block's maps
        m = tl.program_id(1) * BLOCK_M + i
        row = tl.zeros((BLOCK_N,), dtype=tl.float32)
        for d0 in range(0, D, BLOCK_D):
            offs_d = d0 + tl.arange(0, BLOCK_D)
            d_ok = offs_d < D
            grad = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
            for k0 in range(0, K, BLOCK_K):
                offs_k = k0 + tl.arange(0, BLOCK_K)
                nk = n_ok[:, None] & (offs_k < K)[None, :]
                kd = (offs_k < K)[:, None] & d_ok[None, :]
                nk_at = offs_k[None, :] * N + offs_n[:, None]
                kd_at = offs_k[:, None] * D + offs_d[None, :]
                s = tl.load(s_ptr + (b * M + m) * K * N + nk_at, mask=nk, other=0.0)
                w = tl.load(w_ptr + b * K * N + nk_at, mask=nk, other=0.0)
                p = tl.load(p_ptr + b * K * D + kd_at, mask=kd, other=0.0)
                r = tl.load(r_ptr + (b * M + m) * K * D + kd_at, mask=kd, other=0.0)
                if UPCAST:
                    s = s.to(tl.float32)
                    w = w.to(tl.float32)
                    p = p.to(tl.float32)
                    r = r.to(tl.float32)
                grad = tl.dot(s, p, grad, input_precision=PRECISION)
                grad = tl.dot(w, r, grad, input_precision=PRECISION)
            a = tl.load(a_ptr + b * N * D + offs_n[:, None] * D + offs_d[None, :],
                        mask=n_ok[:, None] & d_ok[None, :], other=0.0).to(tl.float32)
            row += tl.sum(tl.where(grad > 0.0, grad, 0.0) * a, axis=1)
        raw = tl.where(offs_m[:, None] == m, row[None, :], raw)
    raw = tl.where(raw > 0.0, raw, 0.0)
    finish_tile(raw, raw_ptr, norm_ptr, ws_ptr, offs_m, offs_n, offs_m < M, n_ok, M, N, s_ob, s_om, BLOCK_M, BLOCK_N)
