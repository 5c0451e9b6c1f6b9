"""The engine's view of a timm `VisionTransformer`: trunk, target and embed for any pooling.

Shared by the open_clip backend (SigLIP and other towers with a timm trunk) and by linear
probes over timm backbones (DINOv2). Everything is read from the model: prefix tokens
(`num_prefix_tokens`: class and register tokens), the patch grid (`patch_embed.grid_size`,
may be non-square) and the pooling (`global_pool`, `attn_pool`, `pool_include_prefix`).

Targets (DESIGN.md, "Target activation"):

- attention pooling ('map', SigLIP): A = the trunk's final norm output, all tokens, which is
  exactly the input of the pooling head's key/value projection. A shift of every patch
  token moves every patch key by W_k s and every value by W_v s, so the fast path of the
  CLS case carries over: `trunk` runs ALL blocks (the pooling head plays "the last
  block") and `embed` is only the latent query's attention row, the head's norm/MLP
  residual and the projection.
- class token ('token'): A = `norm1` of the last block, as for CLIP; `embed` runs the CLS
  query's attention row and the CLS MLP only.
- mean pooling ('avg', DINOv2 probes) and anything non-standard (qk-norm, gated or other
  attention modules): every output token depends on the shift, so `embed` runs the whole
  last block (or the whole pooling head) on B x M shifted copies of A. Still one backward
  for all M objectives, but the cost grows with M (one block forward + backward per
  objective). Measured, DINOv2 ViT-B/14 at 224, CPU, 2 threads, shared machine: embed +
  backward 0.16 s for M = 1 and 1.2 s for M = 16, against 1.6 s for one plain forward.
  The Jacobian path (ImageFeatures reused) then runs E + 1 such copies once per image.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UsageError

FULL_PATH_JACOBIAN_CHUNK = 32  # shift rows per backward when every row runs the last block


class TimmViT:
    """Trunk, target and embed of a timm VisionTransformer, followed by an optional head module.

    Args:
        vit: the timm model; used as is, never modified.
        head: applied to the pooled output (open_clip's `TimmModel.head`); None for none.
        grid: patch grid (h, w) the tower runs at; position embeddings are resampled to it.
        label: the model's module path, for `target_layer`.
        autocast_dtype: dtype the trunk runs in under autocast (bfloat16 on CUDA); None: as stored.
    """

    def __init__(self, vit: nn.Module, head: nn.Module | None, grid: tuple[int, int], label: str = "trunk",
                 autocast_dtype: torch.dtype | None = None):
        self.vit, self.head, self.grid, self.autocast_dtype = vit, head, tuple(grid), autocast_dtype
        self.prefix = int(vit.num_prefix_tokens)
        self.pooled_by_head = vit.attn_pool is not None
        self.fast = _fast_kind(vit)
        self.jacobian_chunk = None if self.fast else FULL_PATH_JACOBIAN_CHUNK
        last = len(vit.blocks) - 1
        self.target_layer = f"{label}.norm" if self.pooled_by_head else f"{label}.blocks.{last}.norm1"
        self._pos_cache: dict[tuple[int, int], torch.Tensor] = {}

    # trunk ------------------------------------------------------------------
    def trunk(self, pixels: torch.Tensor) -> torch.Tensor:
        """Residual stream entering the last block; for attention-pooled towers, leaving it."""
        v = self.vit
        proj = v.patch_embed.proj
        dtype = self.autocast_dtype
        autocast = torch.autocast(proj.weight.device.type, dtype=dtype, enabled=dtype is not None)
        with torch.inference_mode(), autocast:
            x = proj(pixels.to(proj.weight.device, proj.weight.dtype))
            x = v.patch_embed.norm(x.flatten(2).transpose(1, 2))
            x = v.norm_pre(self._with_prefix(x))
            blocks = v.blocks if self.pooled_by_head else v.blocks[:-1]
            for block in blocks:
                x = block(x)
        return x.float().clone()  # a normal tensor, usable by autograd

    def _with_prefix(self, x: torch.Tensor) -> torch.Tensor:
        """Class/register tokens and position embedding, as timm's `_pos_embed` adds them."""
        v = self.vit
        prefix = [t.expand(x.shape[0], -1, -1).to(x.dtype) for t in (v.cls_token, v.reg_token) if t is not None]
        if v.pos_embed is None:
            return torch.cat([*prefix, x], dim=1)
        pos = self.pos_embed().to(x.dtype)
        if v.no_embed_class:
            return torch.cat([*prefix, x + pos], dim=1)
        return torch.cat([*prefix, x], dim=1) + pos

    def pos_embed(self) -> torch.Tensor:
        """The position embedding resampled to `grid` (timm's own resampling, bicubic)."""
        v = self.vit
        native = tuple(v.patch_embed.grid_size)
        if self.grid == native:
            return v.pos_embed
        if self.grid not in self._pos_cache:
            from timm.layers import resample_abs_pos_embed

            with torch.no_grad():
                self._pos_cache[self.grid] = resample_abs_pos_embed(
                    v.pos_embed, new_size=list(self.grid), old_size=list(native),
                    num_prefix_tokens=0 if v.no_embed_class else self.prefix)
        return self._pos_cache[self.grid]

    # target and embed ---------------------------------------------------------
    def target(self, stream: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.vit.norm(stream) if self.pooled_by_head else self.vit.blocks[-1].norm1(stream)

    def embed(self, stream, target, shift, cache=None) -> torch.Tensor:
        """Pooled (and head-projected) embeddings (B, M, E), one per shift vector."""
        if self.fast == "map":
            pooled = self._map_pool(target, shift, cache)
        elif self.fast == "token":
            pooled = self._cls_token(stream, target, shift, cache)
        else:
            pooled = self._full(stream, target, shift)
        return pooled if self.head is None else self.head(pooled)

    def _map_pool(self, a, shift, cache) -> torch.Tensor:
        """Latent-query attention pooling over A with the shift on every patch token."""
        v, pool = self.vit, self.vit.attn_pool
        skip = self.prefix if v.pool_include_prefix else 0  # leading tokens that get no shift
        if cache is None or "map_qkv" not in cache:
            with torch.no_grad():
                tokens = a if v.pool_include_prefix else a[:, self.prefix:]
                if pool.pos_embed is not None:
                    tokens = tokens + pool.pos_embed[None].to(tokens.dtype)
                q = pool.q(pool.latent).view(1, pool.latent_len, pool.num_heads, pool.head_dim) * pool.scale
                k, vals = _split_heads(pool.kv(tokens), 2, pool.num_heads)
                base = _scores(q, k)
            if cache is not None:
                cache["map_qkv"] = (q, vals, base)
        else:
            q, vals, base = cache["map_qkv"]
        wk, wv = pool.kv.weight.chunk(2)
        out = _shifted_attention(q, vals, base, shift @ wk.T, shift @ wv.T, skip, pool.num_heads)
        x = pool.proj(out)  # (B, M, L, D)
        x = x + pool.mlp(pool.norm(x))
        x = x[:, :, 0] if pool.pool == "token" else x.mean(dim=2)
        return v.head(v.fc_norm(x))

    def _cls_token(self, stream, a, shift, cache) -> torch.Tensor:
        """The CLS row of the last block (timm `Attention`), then the final norm and head."""
        v = self.vit
        block = v.blocks[-1]
        attn = block.attn
        if cache is None or "cls_qkv" not in cache:
            with torch.no_grad():
                q, k, vals = _split_heads(attn.qkv(a), 3, attn.num_heads)
                q = q[:, :1] * attn.scale
                base = _scores(q, k)
            if cache is not None:
                cache["cls_qkv"] = (q, vals, base)
        else:
            q, vals, base = cache["cls_qkv"]
        _, wk, wv = attn.qkv.weight.chunk(3)
        out = _shifted_attention(q, vals, base, shift @ wk.T, shift @ wv.T, self.prefix, attn.num_heads)
        x = stream[:, None, :1] + block.ls1(attn.proj(out))  # (B, M, 1, D): the CLS residual per shift
        x = x + block.ls2(block.mlp(block.norm2(x)))
        return v.head(v.fc_norm(v.norm(x[:, :, 0])))

    def _full(self, stream, a, shift) -> torch.Tensor:
        """Exact for any pooling: the whole last block (or pooling head) on B x M shifted copies."""
        v = self.vit
        batch, tokens, width = a.shape
        m = shift.shape[1]
        pad = F.pad(shift[:, :, None].expand(-1, -1, tokens - self.prefix, -1), (0, 0, self.prefix, 0))
        x = (a[:, None] + pad).reshape(batch * m, tokens, width)
        if not self.pooled_by_head:
            block = v.blocks[-1]
            x = stream[:, None].expand(-1, m, -1, -1).reshape(batch * m, tokens, width) \
                + block.drop_path1(block.ls1(block.attn(x)))
            x = v.norm(x + block.drop_path2(block.ls2(block.mlp(block.norm2(x)))))
        return v.forward_head(x).reshape(batch, m, -1)


def _split_heads(x: torch.Tensor, parts: int, heads: int) -> tuple[torch.Tensor, ...]:
    """(B, T, parts * H * hd) -> `parts` tensors (B, T, H, hd)."""
    batch, tokens, width = x.shape
    return x.view(batch, tokens, parts, heads, width // (parts * heads)).unbind(2)


def _scores(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Attention logits (B, L, H, T) of L scaled queries (B or 1, L, H, hd) over keys (B, T, H, hd)."""
    return torch.einsum("blhd,bthd->blht", q.expand(k.shape[0], -1, -1, -1), k)


def _shifted_attention(q, v, base, dk, dv, skip: int, heads: int) -> torch.Tensor:
    """Attention of L queries over tokens whose keys/values (after `skip` unshifted ones) move by dk/dv.

    Keys and values are linear in the tokens, so a shift s of every token moves every key by
    W_k s and every value by W_v s: the shared logits `base` (B, L, H, T) and values v
    (B, T, H, hd) are computed once; only the (B, M, L, H) logit offsets and (B, M, H, hd)
    value offsets carry the gradient. Returns (B, M, L, H * hd).
    """
    batch, m, _ = dk.shape
    tokens = v.shape[1]
    dk, dv = dk.view(batch, m, heads, -1), dv.view(batch, m, heads, -1)
    offset = torch.einsum("blhd,bmhd->bmlh", q.expand(batch, -1, -1, -1), dk)
    scores = base[:, None] + F.pad(offset[..., None].expand(-1, -1, -1, -1, tokens - skip), (skip, 0))
    weights = scores.softmax(dim=-1)  # (B, M, L, H, T)
    out = torch.einsum("bmlht,bthd->bmlhd", weights, v)
    out = out + weights[..., skip:].sum(-1, keepdim=True) * dv[:, :, None]
    return out.flatten(-2)


def _fast_kind(vit: nn.Module) -> str | None:
    """'map' or 'token' when the shortcut is exact for this model's modules, else None (full path)."""
    from timm.layers import AttentionPoolLatent
    from timm.layers.attention import Attention

    pool = vit.attn_pool
    if pool is not None:
        plain = isinstance(pool, AttentionPoolLatent) and pool.mlp is not None and pool.pool in ("token", "avg")
        plain = plain and isinstance(pool.k_norm, nn.Identity) and isinstance(pool.q_norm, nn.Identity)
        return "map" if plain else None
    block = vit.blocks[-1]
    attn = getattr(block, "attn", None)
    if vit.global_pool != "token" or type(attn) is not Attention or attn.gate is not None:
        return None
    plain = all(isinstance(getattr(attn, n), nn.Identity) for n in ("q_norm", "k_norm", "norm"))
    return "token" if plain and attn.attn_dim == attn.proj.out_features else None


def check_vit(vit: nn.Module, name: str) -> None:
    """Raise a UsageError unless `vit` is a timm VisionTransformer this module can run."""
    from timm.models.vision_transformer import Block, VisionTransformer

    if not isinstance(vit, VisionTransformer):
        raise UsageError(f"{name}: {type(vit).__name__} is not a timm VisionTransformer; only timm ViTs are "
                         "supported as timm image towers")
    if not vit.global_pool:
        raise UsageError(f"{name}: the timm trunk does not pool (global_pool=''); towers pooled outside timm "
                         "(open_clip 'abs_attn'/'rot_attn') are not supported; use 'map', 'token' or 'avg'")
    if not isinstance(getattr(vit.patch_embed, "proj", None), nn.Conv2d) or vit.patch_embed.dynamic_img_pad:
        raise UsageError(f"{name}: only convolutional patch embeddings without padding are supported")
    if vit.attn_pool is None and not isinstance(vit.blocks[-1], Block):
        raise UsageError(f"{name}: the last block is a {type(vit.blocks[-1]).__name__}; only timm's standard "
                         "pre-norm Block is supported")


def grid_for(vit: nn.Module, image_size: int | None) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    """(run size (H, W), native size (H, W), patch (h, w)); a clear error for sizes off the patch grid."""
    patch = tuple(int(p) for p in vit.patch_embed.patch_size)
    native = tuple(int(s) for s in vit.patch_embed.img_size)
    size = native if image_size is None else (int(image_size), int(image_size))
    if size[0] < patch[0] or size[0] % patch[0] or size[1] % patch[1]:
        lo = max(patch[0], size[0] // patch[0] * patch[0])
        raise UsageError(f"image size {size[0]} must be a positive multiple of the patch size {patch[0]} "
                         f"(try {lo} or {lo + patch[0]})")
    pool = vit.attn_pool
    if size != native and pool is not None and getattr(pool, "pos_embed", None) is not None:
        raise UsageError("this tower's pooling head has its own position embedding for "
                         f"{native[0]}x{native[1]} images; image_size cannot change it")
    return size, native, patch


def pooling_name(vit: nn.Module) -> str:
    """ModelConfig.pooling for a timm ViT: 'map', 'cls' or timm's pool type ('avg', ...)."""
    return {"token": "cls"}.get(vit.global_pool, vit.global_pool)
