"""The engine's view of a timm `VisionTransformer`: trunk, target and embed for any pooling.

Shared by the open_clip backend (SigLIP and other towers with a timm trunk) and by linear
probes over timm backbones (DINOv2). Everything is read from the model: prefix tokens
(`num_prefix_tokens`: class and register tokens), the patch grid (`patch_embed.grid_size`,
may be non-square) and the pooling (`global_pool`, `attn_pool`, `pool_include_prefix`).

Targets (docs/design.md, "Target activation"):

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

from ..config import run_size
from ..errors import UsageError
from .base import autocast, kept_sequences, resample_pos
from ..core.shift import TokenRequest, shifted_attention, split_projection

FULL_PATH_JACOBIAN_CHUNK = 32  # shift rows per backward when every row runs the last block


class TimmViT:
    """Trunk, target and embed of a timm VisionTransformer, followed by an optional head module.

    Args:
        vit: the timm model; used as is, never modified.
        head: applied to the pooled output (open_clip's `TimmModel.head`); None for none.
        grid: patch grid (h, w) the tower runs at; position embeddings are resampled to it.
        autocast_dtype: dtype the trunk runs in under autocast (bfloat16 on CUDA); None: as stored.
    """

    def __init__(self, vit: nn.Module, head: nn.Module | None, grid: tuple[int, int],
                 autocast_dtype: torch.dtype | None = None):
        self.vit, self.head, self.grid, self.autocast_dtype = vit, head, tuple(grid), autocast_dtype
        self.prefix = int(vit.num_prefix_tokens)
        self.pooled_by_head = vit.attn_pool is not None
        self.fast = _fast_kind(vit)
        self.jacobian_chunk = None if self.fast else FULL_PATH_JACOBIAN_CHUNK

    # trunk ------------------------------------------------------------------
    def trunk(self, pixels: torch.Tensor) -> torch.Tensor:
        """Residual stream entering the last block; for attention-pooled towers, leaving it."""
        with torch.inference_mode():
            x = self._tokens(pixels, self.vit.blocks if self.pooled_by_head else self.vit.blocks[:-1])
        return x.float().clone()  # a normal tensor, usable by autograd

    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """The tower's plain forward at `grid` (every block, timm's own pooling, then `head`): (B, E)
        float32, under the caller's grad mode; `target_module` is called as a module on the way."""
        with autocast(self.vit.patch_embed.proj.weight.device, self.autocast_dtype):
            pooled = self.vit.forward_head(self.vit.norm(self._tokens(pixels, self.vit.blocks)))
            return (pooled if self.head is None else self.head(pooled)).float()

    def encode_kept(self, pixels: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """`Backend.encode_kept`: the prefix tokens plus the patch tokens `keep` (B, S, n), dropped after the
        position embedding, through every block, timm's own pooling and `head`: (B, S, E), grad-free."""
        v, pool = self.vit, self.vit.attn_pool
        if pool is not None and getattr(pool, "pos_embed", None) is not None:
            raise UsageError("this tower's pooling head has a position embedding per token; its tokens cannot be "
                             "dropped, so faithfulness is not available")
        proj = v.patch_embed.proj
        with torch.inference_mode(), autocast(proj.weight.device, self.autocast_dtype):
            x = v.patch_embed.norm(proj(pixels.to(proj.weight.device, proj.weight.dtype)).flatten(2).transpose(1, 2))
            x = v.norm_pre(kept_sequences(self._with_prefix(x), keep, self.prefix))
            pooled = v.forward_head(v.norm(v.blocks(x)))
            out = (pooled if self.head is None else self.head(pooled)).float()
        return out.reshape(*keep.shape[:2], -1).clone()

    def target_module(self) -> nn.Module:
        """The module whose output is A: the final norm (attention pooling) or the last block's norm1."""
        return self.vit.norm if self.pooled_by_head else self.vit.blocks[-1].norm1

    def _tokens(self, pixels: torch.Tensor, blocks) -> torch.Tensor:
        """Patch embedding, prefix tokens, position embedding, then `blocks`, under the tower's autocast."""
        v = self.vit
        proj = v.patch_embed.proj
        with autocast(proj.weight.device, self.autocast_dtype):
            x = proj(pixels.to(proj.weight.device, proj.weight.dtype))
            x = v.patch_embed.norm(x.flatten(2).transpose(1, 2))
            x = v.norm_pre(self._with_prefix(x))
            for block in blocks:
                x = block(x)
        return x

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
        return resample_pos(v.pos_embed, self.grid, v.patch_embed.grid_size, 0 if v.no_embed_class else self.prefix)

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
        tokens = a if v.pool_include_prefix else a[:, self.prefix:]
        if pool.pos_embed is not None:
            tokens = tokens + pool.pos_embed[None].to(tokens.dtype)
        proj = ((pool.q.weight, pool.q.bias), *split_projection(pool.kv.weight, pool.kv.bias, 2))
        skip = self.prefix if v.pool_include_prefix else 0  # leading tokens that get no shift
        out = shifted_attention(pool.latent, tokens, proj, pool.num_heads, pool.scale, shift, skip, cache)
        x = pool.proj(out)  # (B, M, L, D)
        x = x + pool.mlp(pool.norm(x))
        x = x[:, :, 0] if pool.pool == "token" else x.mean(dim=2)
        return v.head(v.fc_norm(x))

    def _cls_token(self, stream, a, shift, cache) -> torch.Tensor:
        """The CLS row of the last block (timm `Attention`), then the final norm and head."""
        v = self.vit
        block = v.blocks[-1]
        attn = block.attn
        proj = split_projection(attn.qkv.weight, attn.qkv.bias, 3)
        out = shifted_attention(a[:, :1], a, proj, attn.num_heads, attn.scale, shift, self.prefix, cache)
        x = stream[:, None, :1] + block.ls1(attn.proj(out))  # (B, M, 1, D): the CLS residual per shift
        x = x + block.ls2(block.mlp(block.norm2(x)))
        return v.head(v.fc_norm(v.norm(x[:, :, 0])))

    def _full(self, stream, a, shift) -> torch.Tensor:
        """Exact for any pooling: the whole last block (or pooling head) on B x M shifted copies."""
        v = self.vit
        batch, tokens, width = a.shape
        if isinstance(shift, TokenRequest):  # element-wise bases: one shift per token, dO/dA itself
            delta = shift.token_leaf(a[:, self.prefix:])
        else:
            delta = shift[:, :, None].expand(-1, -1, tokens - self.prefix, -1)
        m = delta.shape[1]
        pad = F.pad(delta, (0, 0, self.prefix, 0))
        x = (a[:, None] + pad).reshape(batch * m, tokens, width)
        if not self.pooled_by_head:
            block = v.blocks[-1]
            x = stream[:, None].expand(-1, m, -1, -1).reshape(batch * m, tokens, width) \
                + block.drop_path1(block.ls1(block.attn(x)))
            x = v.norm(x + block.drop_path2(block.ls2(block.mlp(block.norm2(x)))))
        return v.forward_head(x).reshape(batch, m, -1)


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


def vit_fields(vit: nn.Module, image_size: int | None, label: str) -> dict:
    """The ModelConfig fields read from a timm ViT run at `image_size` (None: native); `label`: its module path."""
    patch = tuple(int(p) for p in vit.patch_embed.patch_size)
    native = tuple(int(s) for s in vit.patch_embed.img_size)
    size = run_size(native, patch, image_size)
    pool = vit.attn_pool
    if size != native and pool is not None and getattr(pool, "pos_embed", None) is not None:
        raise UsageError("this tower's pooling head has its own position embedding for "
                         f"{native[0]}x{native[1]} images; image_size cannot change it")
    return dict(image_size=size, native_image_size=native, patch_size=patch,
                num_prefix_tokens=int(vit.num_prefix_tokens), width=int(vit.embed_dim),
                target_layer=target_layer(vit, label), pooling=pooling_name(vit))


def target_layer(vit: nn.Module, label: str) -> str:
    """Module path of the target: the final norm for attention-pooled towers, else the last block's norm1."""
    return f"{label}.norm" if vit.attn_pool is not None else f"{label}.blocks.{len(vit.blocks) - 1}.norm1"


def pooling_name(vit: nn.Module) -> str:
    """ModelConfig.pooling for a timm ViT: 'map', 'cls' or timm's pool type ('avg', ...)."""
    return {"token": "cls"}.get(vit.global_pool, vit.global_pool)
