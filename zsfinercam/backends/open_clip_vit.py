"""The engine's view of open_clip's own CLS-pooled `VisionTransformer` (OpenAI, LAION, DFN, BioCLIP).

Target activation: `ln_1` of the last residual block. Patch tokens reach the pooled CLS
output only as keys/values of the CLS query, so `embed` runs the CLS query's attention
row, the CLS MLP, `ln_post` and the projection with grad, once per shift vector
(`shift.shifted_attention`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import run_size
from ..errors import UsageError
from .base import autocast, kept_sequences, resample_pos
from ..core.shift import shifted_attention, split_projection


class OpenClipViT:
    """Trunk, target, embed and plain forward of an open_clip `VisionTransformer`, used as is.

    Args:
        visual: the model's image tower (`model.visual`).
        grid: patch grid (h, w) the tower runs at; the position embedding is resampled to it.
        autocast_dtype: dtype the trunk runs in under autocast (bfloat16 on CUDA); None: as stored.
    """

    jacobian_chunk = None  # the fast path holds: one CLS row per shift

    def __init__(self, visual: nn.Module, grid: tuple[int, int], autocast_dtype: torch.dtype | None = None):
        self.visual, self.grid, self.autocast_dtype = visual, tuple(grid), autocast_dtype

    def trunk(self, pixels: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            x = self._tokens(pixels, self.visual.transformer.resblocks[:-1])
        return x.float().clone()  # a normal tensor, usable by autograd

    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """What `model.encode_image` gives at `grid`: every block, CLS token, `ln_post`, projection;
        (B, E) float32 under the caller's grad mode."""
        v = self.visual
        with autocast(v.conv1.weight.device, self.autocast_dtype):
            pooled = v.ln_post(self._tokens(pixels, v.transformer.resblocks)[:, 0])
            return (pooled @ v.proj if v.proj is not None else pooled).float()

    def target_module(self) -> nn.Module:
        return self.visual.transformer.resblocks[-1].ln_1

    def pos_embed(self) -> torch.Tensor:
        """The position embedding resampled to `grid` (timm's bicubic resampling, `base.resample_pos`)."""
        v = self.visual
        return resample_pos(v.positional_embedding, self.grid, v.grid_size, 1)

    def encode_kept(self, pixels: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """`Backend.encode_kept`: CLS plus the patch tokens `keep` (B, S, n), dropped after the position
        embedding, through every block; CLS, `ln_post`, projection: (B, S, E) float32, grad-free."""
        v = self.visual
        with torch.inference_mode(), autocast(v.conv1.weight.device, self.autocast_dtype):
            x = self._blocks(kept_sequences(self._embedded(pixels), keep, 1), v.transformer.resblocks)
            pooled = v.ln_post(x[:, 0])
            out = (pooled @ v.proj if v.proj is not None else pooled).float()
        return out.reshape(*keep.shape[:2], -1).clone()

    def _tokens(self, pixels: torch.Tensor, blocks) -> torch.Tensor:
        """(B, T, D) after patch embedding, CLS token, position embedding, `ln_pre` and `blocks`."""
        with autocast(self.visual.conv1.weight.device, self.autocast_dtype):
            return self._blocks(self._embedded(pixels), blocks)

    def _embedded(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, T, D): patch embedding, CLS token and position embedding (call under the tower's autocast)."""
        v = self.visual
        x = v.conv1(pixels.to(v.conv1.weight.device, v.conv1.weight.dtype))
        batch, width, h, w = x.shape
        x = x.flatten(2).transpose(1, 2)
        cls_tok = v.class_embedding.to(x.dtype).expand(batch, 1, width)
        return torch.cat([cls_tok, x], dim=1) + resample_pos(v.positional_embedding, (h, w), v.grid_size,
                                                             1).to(x.dtype)

    def _blocks(self, x: torch.Tensor, blocks) -> torch.Tensor:
        """`ln_pre` (per token), then `blocks`."""
        v = self.visual
        x = v.ln_pre(x)
        for block in blocks:
            x = block(x) if v.transformer.batch_first else block(x.transpose(0, 1)).transpose(0, 1)
        return x

    def target(self, stream: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.target_module()(stream)

    def embed(self, stream, target, shift, cache=None) -> torch.Tensor:
        v = self.visual
        block = v.transformer.resblocks[-1]
        attn = block.attn
        out = shifted_attention(target[:, :1], target, split_projection(attn.in_proj_weight, attn.in_proj_bias, 3),
                                attn.num_heads, attn.head_dim**-0.5, shift, 1, cache)
        cls_out = F.linear(out[:, :, 0], attn.out_proj.weight, attn.out_proj.bias)
        x = stream[:, :1] + block.ls_1(cls_out)  # (B, M, D): the CLS residual, one per shift
        x = x + block.ls_2(block.mlp(block.ln_2(x)))
        pooled = v.ln_post(x)
        return pooled @ v.proj if v.proj is not None else pooled


def vit_fields(model: nn.Module, name: str, image_size: int | None) -> dict:
    """Check the image tower is a supported CLS-pooled ViT; the image fields of its ModelConfig."""
    from open_clip.transformer import ResidualAttentionBlock, VisionTransformer

    v = getattr(model, "visual", None)
    if not isinstance(v, VisionTransformer):
        raise UsageError(f"{name}: image tower {type(v).__name__} is not supported by the open_clip backend "
                         "(open_clip ViTs and timm ViT trunks only)")
    last = v.transformer.resblocks[-1]
    if v.attn_pool is not None or v.pool_type != "tok" or not isinstance(last, ResidualAttentionBlock) \
            or not isinstance(last.attn, nn.MultiheadAttention) or hasattr(last, "ln_1_kv"):
        raise UsageError(f"{name}: only CLS-token pooled ViTs with standard attention blocks are supported")
    patch, native = tuple(v.patch_size), tuple(v.image_size)
    layers = len(v.transformer.resblocks)
    return dict(image_size=run_size(native, patch, image_size), native_image_size=native, patch_size=patch,
                num_prefix_tokens=1, width=v.conv1.out_channels, embed_dim=v.output_dim,
                target_layer=f"visual.transformer.resblocks.{layers - 1}.ln_1", pooling="cls")
