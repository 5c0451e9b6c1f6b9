"""Channel weights -> token maps for all objectives at once (Finer-CAM's last step).

Given the activations ``A`` of the patch tokens, shape ``(B, N, D)``, and one weight
vector per map, ``w`` of shape ``(B, M, D)``, this computes for every image ``b`` and
map ``m``

    raw[b, m, n]  = ReLU(sum_d w[b, m, d] * A[b, n, d])
    norm[b, m, :] = (raw[b, m, :] - min) / (max - min)     (min, max over the N tokens)

``raw`` is the token map that results keep; ``norm`` is the display map. A map whose
values are all equal (for example all zero after the ReLU) normalises to zeros, never NaN.

Two implementations give the same numbers:

* ``token_maps_torch``: the reference and the CPU path. Upcasts to float32 first, then
  ``bmm``, ReLU and an ``amin``/``amax`` epilogue.
* the Triton kernel: one launch (plus a memset of a small int32 workspace). A batched
  GEMM over a ``(ceil(N / BLOCK_N), ceil(M / BLOCK_M), B)`` grid, so even one image with
  a few maps spreads over many SMs, with the epilogue fused: each program accumulates
  one tile of ``w @ A.T`` over D in float32 (``tl.dot``; half-precision operands go to
  the tensor cores as they are, float32 operands use ``input_precision="ieee"`` so the
  result matches torch to ~1e-6), applies the ReLU, writes ``raw`` and folds the tile's
  per-map max / min over its valid (unmasked) tokens into the workspace with atomics.
  The last program to finish a (image, map block) then writes ``norm`` for those maps
  (see the comment above ``jit_kernel``). Any N works (ViT grids of 32x32 or 37x37
  included); masked-out tokens never enter the min / max.

The epilogue (``finish_tile``), the lazy build (``jit_kernel``, once per interpreter flag
value) and the launch (``launch_maps``) serve the CAM bases' own kernels too
(``zsfinercam.core.bases``). Triton's interpreter (``TRITON_INTERPRET=1``) runs the kernels on
CPU tensors, for testing only; ``kernel_choice`` says when Triton can run and why not. The
interpreter does not support bfloat16 arithmetic (``tl.dot`` multiplies the raw bit patterns;
triton-lang/triton#11584), so there bfloat16 tiles are upcast to float32 before the dot, which
is exact.

Measured on one H200 (torch 2.11 with triton 3.6, CUDA-graph replay): in fp16 or bf16,
9-18 us for the kernel against 27-80 us for the torch path at B=1..8, N=196..1369,
D=768..1024, M=16..256 (2.6-4.6x); in fp32 the kernel ran at 0.36-0.65x the torch path's
speed, hence ``_AUTO_DTYPES`` (half precision only). The maths: docs/design.md, "The fused kernel".
"""
from __future__ import annotations

import contextlib
import functools
import types
from typing import TYPE_CHECKING, Any

import torch

from .kernel_choice import (IMPLS, KERNEL_DTYPES, TritonUnavailableError, import_triton, interpreting,
                            unavailable_reason, upcast, use_triton)

if TYPE_CHECKING:  # names used inside the kernel sources; bound lazily, see jit_kernel
    import triton.language as tl

__all__ = ["finish_tile", "jit_kernel", "launch_maps", "minmax", "token_maps", "token_maps_torch"]

# "auto" sends only half precision to the kernel: with exact (ieee) fp32 products the
# kernel ran at 0.36-0.65x the speed of the torch path (cuBLAS fp32 bmm) on an H200,
# against 1.5-4.6x faster in fp16/bf16.
_AUTO_DTYPES = (torch.float16, torch.bfloat16)


def token_maps(A: torch.Tensor, w: torch.Tensor, *, impl: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Raw and min-max-normalised token maps for every (image, weight vector) pair.

    Args:
        A: Patch-token activations, shape (B, N, D), prefix tokens already removed.
            Any floating dtype; mixed dtypes of ``A`` and ``w`` are promoted.
        w: Channel weights, shape (B, M, D): M maps per image.
        impl: "auto" uses the Triton kernel when ``A`` is on CUDA, triton imports and the
            (promoted) dtype is float16 or bfloat16, else torch; it never picks the
            interpreter. float32 stays on torch under "auto" because cuBLAS's exact fp32
            GEMM beat the kernel's (see ``_AUTO_DTYPES``). "torch" forces the reference;
            "triton" forces the kernel (float16, bfloat16 or float32) and raises
            ``TritonUnavailableError`` saying why when it cannot run.

    Returns:
        ``(raw, norm)``, both float32 of shape (B, M, N) on ``A``'s device, detached.
        ``norm`` is in [0, 1] per map; constant maps give zeros. Non-finite inputs give
        unspecified maps (the kernel's ReLU sends NaN to 0, torch's keeps it).

    Mixed dtypes are promoted, so float16 ``A`` with float32 ``w`` runs in float32 (on
    torch under "auto"). Casting ``w`` to float16 to get the fast path is the caller's
    call: token-mean gradients can be small enough to lose precision in float16's
    subnormal range; bfloat16 has float32's range.

    Raises:
        TypeError: non-tensor or non-floating inputs.
        ValueError: bad shapes, devices or ``impl``.
        TritonUnavailableError: ``impl="triton"`` where it cannot run.
    """
    if impl not in IMPLS:
        raise ValueError(f"expected impl to be one of {', '.join(map(repr, IMPLS))}, got {impl!r}")
    _check_inputs(A, w)
    if impl == "torch" or (impl == "auto" and not _auto_picks_triton(A, w)):
        return token_maps_torch(A, w)
    reason = _triton_unavailable_reason(A, w)
    if reason is not None:
        raise TritonUnavailableError(f"impl='triton' cannot run: {reason}")
    return _token_maps_triton(A, w)


def token_maps_torch(A: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference implementation: float32 throughout (inputs are upcast before the GEMM).

    Same contract as ``token_maps``. float64 inputs are computed in float32 too.
    """
    _check_inputs(A, w)
    with torch.no_grad():
        raw = torch.relu(torch.bmm(w.float(), A.float().transpose(1, 2)))
    return raw, minmax(raw)


def minmax(raw: torch.Tensor) -> torch.Tensor:
    """Per-map min-max over the last axis of ``raw`` (..., N); a constant map gives zeros, never NaN."""
    with torch.no_grad():
        if raw.numel() == 0:
            return raw.clone()
        lo = raw.amin(dim=-1, keepdim=True)
        span = raw.amax(dim=-1, keepdim=True) - lo
        return (raw - lo) / torch.where(span > 0, span, torch.ones_like(span))


# --------------------------------------------------------------------------- checks


def _check_inputs(A: Any, w: Any) -> None:
    for name, t, shape in (("A", A, "(B, N, D)"), ("w", w, "(B, M, D)")):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"expected {name} to be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(
                f"expected {name} to have a floating dtype (float16, bfloat16, float32, float64), got {t.dtype}"
            )
        if t.dim() != 3:
            raise ValueError(f"expected {name} of shape {shape}, got shape {tuple(t.shape)}")
    if A.shape[0] != w.shape[0]:
        raise ValueError(f"expected A and w to have the same batch size B, got {A.shape[0]} and {w.shape[0]}")
    if A.shape[2] != w.shape[2]:
        raise ValueError(f"expected A and w to have the same channel count D, got {A.shape[2]} and {w.shape[2]}")
    if A.shape[1] < 1 or A.shape[2] < 1:
        raise ValueError(f"expected at least one token and one channel (N, D >= 1), got shape {tuple(A.shape)}")
    if A.device != w.device:
        raise ValueError(f"expected A and w on the same device, got {A.device} and {w.device}")


def _auto_picks_triton(A: torch.Tensor, w: torch.Tensor) -> bool:
    return torch.promote_types(A.dtype, w.dtype) in _AUTO_DTYPES and use_triton("auto", A)


def _triton_unavailable_reason(A: torch.Tensor, w: torch.Tensor) -> str | None:
    dtype = torch.promote_types(A.dtype, w.dtype)
    if dtype not in KERNEL_DTYPES:
        return f"expected float16, bfloat16 or float32 inputs, got {dtype}; use impl='torch'"
    return unavailable_reason(A.device, A.shape[0])


# --------------------------------------------------------------------------- launch


def _launch_config(M: int, dtype: torch.dtype) -> dict[str, int]:
    """Tile sizes (tl.dot needs every side >= 16), picked from a sweep on an H200 with
    CUDA-graph timing; fp32 tiles take twice the shared memory, so half the D step."""
    block_m = 16 if M <= 16 else 32 if M <= 32 else 64
    if dtype == torch.float32:
        return {"BLOCK_M": block_m, "BLOCK_N": 64, "BLOCK_D": 32, "num_warps": 4, "num_stages": 3}
    return {"BLOCK_M": block_m, "BLOCK_N": 128, "BLOCK_D": 64, "num_warps": 4, "num_stages": 3}


def _token_maps_triton(A: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    dtype = torch.promote_types(A.dtype, w.dtype)
    A, w = A.detach().to(dtype), w.detach().to(dtype)
    (B, N, D), M = A.shape, w.shape[1]
    cfg = _launch_config(M, dtype)
    return launch_maps(_token_maps_kernel, A.device, (B, M, N), cfg, A, w, D,
                       A.stride(0), A.stride(1), A.stride(2), w.stride(0), w.stride(1), w.stride(2),
                       PRECISION="ieee", UPCAST=upcast(dtype))


def launch_maps(kernel: Any, device: torch.device, shape: tuple[int, int, int], cfg: dict[str, int], *args: Any,
                **constants: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Run a maps kernel (one whose programs end with `finish_tile`) over (B, M, N) maps.

    The grid is (ceil(N / BLOCK_N), ceil(M / BLOCK_M), B); the kernel is called with
    (*args[:2], raw, norm, workspace, M, N, *args[2:], raw's strides, **constants, **cfg),
    so its signature starts with two input pointers. Returns float32 (raw, norm), (B, M, N).
    """
    triton = import_triton()
    B, M, N = shape
    raw = torch.empty(shape, dtype=torch.float32, device=device)
    norm = torch.empty_like(raw)
    if raw.numel() == 0:
        return raw, norm
    grid = (triton.cdiv(N, cfg["BLOCK_N"]), triton.cdiv(M, cfg["BLOCK_M"]), B)
    # Arrival counters per (image, map block), then per-map max and min as int32 bits.
    workspace = torch.zeros(B * (grid[1] + 2 * M), dtype=torch.int32, device=device)
    with _device_guard(device):
        jit_kernel(kernel, interpreting(triton))[grid](
            *args[:2], raw, norm, workspace, M, N, *args[2:], raw.stride(0), raw.stride(1), **constants, **cfg)
    return raw, norm


def _device_guard(device: torch.device) -> Any:
    """Make `device` current for the launch, if it is a GPU (triton launches on the current device)."""
    if device.type == "cuda" and device.index not in (None, torch.cuda.current_device()):
        return torch.cuda.device(device)
    return contextlib.nullcontext()


# --------------------------------------------------------------------------- kernel
# Grid (ceil(N / BLOCK_N), ceil(M / BLOCK_M), B): one program per tile of BLOCK_M maps x
# BLOCK_N tokens of one image, so small B * M still fills the GPU. Each program writes its
# ReLU'd tile of raw and folds the tile's per-map max / min into the workspace with atomic
# max on the float bits (raw >= 0, and for non-negative floats the int32 order of the bits
# is the float order; the min is stored as 0x7FFFFFFF - bits so that one zeroed buffer
# initialises everything). It then takes a ticket from the (image, map block) counter;
# the program that arrives last owns the epilogue and writes norm for its BLOCK_M maps
# over all N tokens, reading raw back. Ordering follows the usual "last block" pattern
# (barrier, then a gpu-scope acq_rel atomic by one thread; L1 bypassed on the read-back).
#
# The kernel functions below are plain functions at import time. ``jit_kernel`` copies them
# into a private namespace holding ``tl`` and the jitted helpers under the helpers' names,
# and decorates the copies. Triton resolves a kernel's globals through ``fn.__globals__``
# (the interpreter re-executes the rewritten source there, and adds its own names to it),
# so the private namespace keeps triton out of this module and one build per flag value
# apart from the other.


@functools.lru_cache(maxsize=None)
def jit_kernel(fn: Any, interpret: bool) -> Any:
    """`fn` jitted, with `tl` and this module's jit helpers in its globals; `interpret` keys the
    cache because ``triton.jit`` reads the interpreter flag when it decorates."""
    import triton
    import triton.language as tl

    namespace: dict[str, Any] = {"__name__": fn.__module__, "__builtins__": __builtins__, "tl": tl}
    for helper in (_tile_relu, finish_tile, _arrive_last, _normalise_rows):
        namespace[helper.__name__] = triton.jit(_rebind(helper, namespace))
    return triton.jit(_rebind(fn, namespace))


def _rebind(fn: Any, namespace: dict[str, Any]) -> Any:
    """A copy of ``fn`` (same code, so same source for triton) whose globals are ``namespace``."""
    copy = types.FunctionType(fn.__code__, namespace, fn.__name__, fn.__defaults__, fn.__closure__)
    copy.__annotations__ = dict(fn.__annotations__)
    copy.__qualname__, copy.__module__, copy.__doc__ = fn.__qualname__, fn.__module__, fn.__doc__
    return copy


def _token_maps_kernel(a_ptr, w_ptr, raw_ptr, norm_ptr, ws_ptr, M, N, D,
                       s_ab, s_an, s_ad, s_wb, s_wm, s_wd, s_ob, s_om,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                       PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """One (BLOCK_M, BLOCK_N) tile of raw; the last tile of a map block also writes norm.
    Outputs are (B, M, N) with unit stride along N."""
    pid_b = tl.program_id(2).to(tl.int64)
    offs_m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok = offs_m < M
    n_ok = offs_n < N
    raw = _tile_relu(a_ptr + pid_b * s_ab, w_ptr + pid_b * s_wb, offs_m, offs_n, m_ok, n_ok,
                     D, s_an, s_ad, s_wm, s_wd, BLOCK_M, BLOCK_N, BLOCK_D, PRECISION, UPCAST)
    finish_tile(raw, raw_ptr, norm_ptr, ws_ptr, offs_m, offs_n, m_ok, n_ok, M, N, s_ob, s_om, BLOCK_M, BLOCK_N)


def finish_tile(raw, raw_ptr, norm_ptr, ws_ptr, offs_m, offs_n, m_ok, n_ok, M, N, s_ob, s_om,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """jit helper, the epilogue of every maps kernel: store a ReLU'd (BLOCK_M, BLOCK_N) tile of raw
    (non-negative, +0.0 for zero) and fold it into its maps' max / min; the last tile of a map
    block to arrive also writes norm for those maps. Grid (N blocks, M blocks, B)."""
    pid_b = tl.program_id(2).to(tl.int64)
    pid_m = tl.program_id(1)
    m_blocks = tl.num_programs(1)
    rows = pid_b * s_ob + offs_m[:, None].to(tl.int64) * s_om
    tl.store(raw_ptr + rows + offs_n[None, :], raw, mask=m_ok[:, None] & n_ok[None, :])
    # Workspace: [B * m_blocks counters | B * M max bits | B * M (0x7FFFFFFF - min bits)].
    hi_idx = m_blocks * tl.num_programs(2) + pid_b * M + offs_m
    lo_idx = hi_idx + M * tl.num_programs(2)
    tile_hi = tl.max(tl.where(n_ok[None, :], raw, 0.0), axis=1)
    tile_lo = tl.min(tl.where(n_ok[None, :], raw, float("inf")), axis=1)
    last = _arrive_last(ws_ptr, hi_idx, lo_idx, pid_b * m_blocks + pid_m, tile_hi, tile_lo, m_ok,
                        tl.num_programs(0))
    if last:
        _normalise_rows(raw_ptr, norm_ptr, ws_ptr, hi_idx, lo_idx, rows, m_ok, N, BLOCK_M, BLOCK_N)


def _tile_relu(a_base, w_base, offs_m, offs_n, m_ok, n_ok, D, s_an, s_ad, s_wm, s_wd,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
               PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """jit helper: one (BLOCK_M, BLOCK_N) tile of ReLU(w @ A.T), fp32 accumulate over D.
    The ReLU maps -0.0 to +0.0 so the bit-pattern order of the result is its float order."""
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        d_ok = offs_d < D
        wt = tl.load(w_base + offs_m[:, None] * s_wm + offs_d[None, :] * s_wd,
                     mask=m_ok[:, None] & d_ok[None, :], other=0.0)
        at = tl.load(a_base + offs_d[:, None] * s_ad + offs_n[None, :] * s_an,
                     mask=d_ok[:, None] & n_ok[None, :], other=0.0)
        if UPCAST:
            wt = wt.to(tl.float32)
            at = at.to(tl.float32)
        acc = tl.dot(wt, at, acc, input_precision=PRECISION)
    return tl.where(acc > 0.0, acc, 0.0)


def _arrive_last(ws_ptr, hi_idx, lo_idx, count_idx, tile_hi, tile_lo, m_ok, n_blocks):
    """jit helper: fold a tile's per-map max / min into the workspace; True for the last
    of the n_blocks programs of this (image, map block) to arrive."""
    tl.atomic_max(ws_ptr + hi_idx, tile_hi.to(tl.int32, bitcast=True), mask=m_ok)
    tl.atomic_max(ws_ptr + lo_idx, 0x7FFFFFFF - tile_lo.to(tl.int32, bitcast=True), mask=m_ok)
    # Every thread's raw stores and atomics happen before the release below.
    tl.debug_barrier()
    ticket = tl.atomic_add(ws_ptr + count_idx, 1, sem="acq_rel", scope="gpu")
    return ticket == n_blocks - 1


def _normalise_rows(raw_ptr, norm_ptr, ws_ptr, hi_idx, lo_idx, rows, m_ok, N,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """jit helper: norm = (raw - min) / (max - min) for BLOCK_M maps over all N tokens."""
    tl.debug_barrier()
    # Atomic reads: served by L2, so they see every other program's update.
    hi = tl.atomic_add(ws_ptr + hi_idx, 0, mask=m_ok).to(tl.float32, bitcast=True)
    lo = (0x7FFFFFFF - tl.atomic_add(ws_ptr + lo_idx, 0, mask=m_ok)).to(tl.float32, bitcast=True)
    hi = tl.where(m_ok, hi, 0.0)  # masked-out maps read nothing: keep their lanes finite
    lo = tl.where(m_ok, lo, 0.0)
    span = hi - lo
    scale = tl.where(span > 0.0, span, 1.0)
    for n0 in range(0, N, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        ok = m_ok[:, None] & (offs_n < N)[None, :]
        raw = tl.load(raw_ptr + rows + offs_n[None, :], mask=ok, other=0.0, cache_modifier=".cg")
        tl.store(norm_ptr + rows + offs_n[None, :], (raw - lo[:, None]) / scale[:, None], mask=ok)
