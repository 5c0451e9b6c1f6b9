"""The open_clip backend: CLS-pooled open_clip ViTs (OpenAI, LAION, DFN, BioCLIP, custom configs).

Towers with a timm trunk (SigLIP's attention-pooled ViTs) are dispatched by `wrap` to
`open_clip_timm.OpenClipTimmBackend`, which is registered under the same name.
"""
from __future__ import annotations

import copy
import hashlib
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

from ..config import OPENAI_MEAN, OPENAI_STD, ModelConfig
from ..errors import UsageError, WorkError
from .base import Backend
from .open_clip_weights import Resolved, resolve
from .registry import register_backend


@register_backend("open_clip")
class OpenClipBackend(Backend):
    """Engine view of an open_clip CLIP whose image tower is a CLS-pooled VisionTransformer.

    Target activation: `ln_1` of the last residual block (DESIGN.md). Only the CLS
    query's attention row, the CLS MLP and the head are run with grad.
    """

    def __init__(self, model: nn.Module, tokenizer, config: ModelConfig, device: torch.device):
        self.model, self.tokenizer, self.config, self.device = model, tokenizer, config, device
        self.autocast_dtype = torch.bfloat16 if device.type == "cuda" else None
        self._fingerprint: str | None = None

    @classmethod
    def from_pretrained(cls, name, *, pretrained, model_config, device, image_size) -> "OpenClipBackend":
        resolved = resolve(name, pretrained, model_config)
        model = _build(resolved).to(device).eval()
        tokenizer = _tokenizer(resolved)
        _check_tokenizer(tokenizer)
        label = pretrained if resolved.model_cfg is None or model_config else resolved.checkpoint
        return wrap(model, tokenizer, name, label, image_size, resolved, device)

    @classmethod
    def from_model(cls, model: nn.Module, tokenizer, *, name: str = "custom", image_size: int | None = None):
        """Wrap an open_clip model the caller already holds; it is used as is, never modified.

        Its weights must be float32 (pass `model.float()`); on CUDA the trunk autocasts to bfloat16 itself.
        """
        require_float32(model, name)
        device = next(model.parameters()).device
        return wrap(model, tokenizer, name, None, image_size, Resolved(name, None, None), device)

    # text -----------------------------------------------------------------
    def tokenize(self, texts: list[str]) -> torch.Tensor:
        return self.tokenizer(texts).to(self.device)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            parts = _text_parts(self.model)
            if parts is None:
                return self.model.encode_text(tokens).float()
            return _encode_text_truncated(parts, tokens).float()

    # image ----------------------------------------------------------------
    def trunk(self, pixels: torch.Tensor) -> torch.Tensor:
        v = self.model.visual
        with torch.inference_mode(), _autocast(self.device, self.autocast_dtype):
            x = v.conv1(pixels.to(self.device, v.conv1.weight.dtype))
            batch, width, h, w = x.shape
            x = x.flatten(2).transpose(1, 2)
            cls_tok = v.class_embedding.to(x.dtype).expand(batch, 1, width)
            x = torch.cat([cls_tok, x], dim=1) + self._pos_embed((h, w)).to(x.dtype)
            x = v.ln_pre(x)
            for block in v.transformer.resblocks[:-1]:
                x = _run_block(block, x, v.transformer.batch_first)
        return x.float().clone()  # a normal tensor, usable by autograd

    def _pos_embed(self, grid: tuple[int, int]) -> torch.Tensor:
        v = self.model.visual
        pe, native = v.positional_embedding, tuple(v.grid_size)
        if grid == native:
            return pe
        from timm.layers import resample_abs_pos_embed

        return resample_abs_pos_embed(pe[None], new_size=list(grid), old_size=list(native), num_prefix_tokens=1)[0]

    def target(self, stream: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.model.visual.transformer.resblocks[-1].ln_1(stream)

    def embed(self, stream, target, shift, cache=None) -> torch.Tensor:
        v = self.model.visual
        block = v.transformer.resblocks[-1]
        cls_out = _cls_attention(block.attn, target, shift, self.config.num_prefix_tokens, cache)
        x = stream[:, :1] + block.ls_1(cls_out)  # (B, M, D): the CLS residual, one per shift
        x = x + block.ls_2(block.mlp(block.ln_2(x)))
        pooled = v.ln_post(x)
        return pooled @ v.proj if v.proj is not None else pooled

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            digest = hashlib.blake2b(digest_size=16)
            digest.update(f"{self.name}|{self.config.name}|".encode())
            for key, tensor in self.model.state_dict().items():
                if not key.startswith("visual."):
                    digest.update(key.encode())
                    digest.update(tensor.detach().float().cpu().numpy().tobytes())
            self._fingerprint = digest.hexdigest()
        return self._fingerprint


def require_float32(model: nn.Module, name: str) -> None:
    """Refuse half-precision weights: the stream, target and embeddings run in float32 (the trunk
    autocasts to bfloat16 on CUDA by itself), and half weights would meet float32 activations."""
    dtypes = sorted({str(p.dtype) for p in model.parameters() if p.is_floating_point()} - {str(torch.float32)})
    if dtypes:
        raise UsageError(f"{name}: the model's weights are {', '.join(dtypes)}; zsfinercam runs it in float32 "
                         f"(and autocasts to bfloat16 on CUDA by itself): pass model.float()")


def _autocast(device: torch.device, dtype):
    if dtype is None:
        return torch.autocast("cpu", enabled=False)
    return torch.autocast(device.type, dtype=dtype)


def _run_block(block: nn.Module, x: torch.Tensor, batch_first: bool) -> torch.Tensor:
    if batch_first:
        return block(x)
    return block(x.transpose(0, 1)).transpose(0, 1)


def _cls_attention(attn: nn.MultiheadAttention, a: torch.Tensor, shift: torch.Tensor, prefix: int,
                   cache: dict | None = None) -> torch.Tensor:
    """The CLS row of multi-head attention over A, once per shift vector added to the patch tokens.

    Keys and values are linear in A, so a shift s moves every patch key by W_k s and
    every patch value by W_v s: the shared keys/values are computed once without
    grad, and only the (B, M, H) score offsets and (B, M, D) value offsets carry it.
    The shared part is kept in `cache` when one is given.
    """
    batch, tokens, width = a.shape
    heads = attn.num_heads
    hd = width // heads
    wq, wk, wv = attn.in_proj_weight.chunk(3)
    bq, bk, bv = attn.in_proj_bias.chunk(3) if attn.in_proj_bias is not None else (None, None, None)
    if cache is not None and "cls_qvb" in cache:
        q, v, base = cache["cls_qvb"]
    else:
        with torch.no_grad():
            q = F.linear(a[:, 0], wq, bq).view(batch, heads, hd) * hd**-0.5
            v = F.linear(a, wv, bv).view(batch, tokens, heads, hd)
            base = torch.einsum("bhd,bthd->bht", q, F.linear(a, wk, bk).view(batch, tokens, heads, hd))
        if cache is not None:
            cache["cls_qvb"] = (q, v, base)
    m = shift.shape[1]
    dk = (shift @ wk.T).view(batch, m, heads, hd)
    dv = (shift @ wv.T).view(batch, m, heads, hd)
    offset = torch.einsum("bhd,bmhd->bmh", q, dk)
    scores = base[:, None] + F.pad(offset[..., None].expand(-1, -1, -1, tokens - prefix), (prefix, 0))
    weights = scores.softmax(dim=-1)  # (B, M, H, T)
    out = torch.einsum("bmht,bthd->bmhd", weights, v) + weights[..., prefix:].sum(-1, keepdim=True) * dv
    return F.linear(out.reshape(batch, m, width), attn.out_proj.weight, attn.out_proj.bias)


def _build(resolved: Resolved) -> nn.Module:
    import open_clip

    try:
        if resolved.model_cfg is None:
            return open_clip.create_model(
                resolved.arch,
                pretrained=resolved.checkpoint,
                force_quick_gelu=resolved.quick_gelu,
                force_preprocess_cfg=resolved.preprocess or None,
            )
        cfg = copy.deepcopy(resolved.model_cfg)
        custom = cfg.pop("custom_text", False) or "hf_model_name" in cfg.get("text_cfg", {})
        model = (open_clip.CustomTextCLIP if custom else open_clip.CLIP)(**cfg)
        if resolved.checkpoint:
            open_clip.load_checkpoint(model, resolved.checkpoint, weights_only=True)
        return model
    except (UsageError, WorkError):
        raise
    except TypeError as err:
        raise UsageError(f"model config for {resolved.arch} is not a valid open_clip config: {err}") from None
    except Exception as err:  # noqa: BLE001 - torch/safetensors raise many types for bad files
        what = resolved.checkpoint or resolved.arch
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise WorkError(
            f"could not load weights {what}: {first} (only safetensors or weights-only torch checkpoints "
            "that match the architecture are accepted)"
        ) from None


def _tokenizer(resolved: Resolved):
    import open_clip
    from open_clip.tokenizer import HFTokenizer, SimpleTokenizer

    if resolved.model_cfg is None:
        return open_clip.get_tokenizer(resolved.arch)
    text_cfg = resolved.model_cfg.get("text_cfg", {})
    context = text_cfg.get("context_length", 77)
    if name := text_cfg.get("hf_tokenizer_name"):
        return HFTokenizer(name, context_length=context, **text_cfg.get("tokenizer_kwargs", {}))
    return SimpleTokenizer(context_length=context)


def _check_tokenizer(tokenizer) -> None:
    """Offline hubs can hand back a degenerate tokenizer that maps every text to one id."""
    ids = tokenizer(["a photo of a cat.", "a photo of a dog."])
    if torch.equal(ids[0], ids[1]):
        raise WorkError("the tokenizer loaded maps different texts to the same tokens: it is not the model's "
                        "real tokenizer (offline hub?); pass a local model folder with --model local-dir:PATH")


def _text_parts(model: nn.Module) -> SimpleNamespace | None:
    """The pieces of a causal text tower whose context can be cut to the longest prompt, else None."""
    tower = getattr(model, "text", model)
    if isinstance(tower, nn.Module) and tower is not model:
        pool, eos = getattr(tower, "pool_type", None), getattr(tower, "eos_id", None)
        if getattr(tower, "cls_emb", None) is not None or getattr(tower, "use_pad_mask", False):
            return None
    else:
        pool, eos = getattr(model, "text_pool_type", None), getattr(model, "text_eos_id", None)
    needed = ("token_embedding", "positional_embedding", "transformer", "ln_final", "attn_mask")
    if pool not in ("argmax", "eos") or any(getattr(tower, n, None) is None for n in needed):
        return None
    return SimpleNamespace(tower=tower, pool=pool, eos=eos)


def _encode_text_truncated(parts: SimpleNamespace, tokens: torch.Tensor) -> torch.Tensor:
    """Exact for causal towers: nothing after the pooled token is attended, so it is dropped."""
    from open_clip.transformer import text_global_pool

    t = parts.tower
    ends = tokens.argmax(dim=-1) if parts.pool == "argmax" else (tokens == parts.eos).int().argmax(dim=-1)
    length = int(ends.max()) + 1
    tokens = tokens[:, :length]
    x = t.token_embedding(tokens) + t.positional_embedding[:length]
    x = t.transformer(x, attn_mask=t.attn_mask[:length, :length])
    x = text_global_pool(t.ln_final(x), tokens, parts.pool, eos_token_id=parts.eos)
    proj = t.text_projection
    if proj is None:
        return x
    return proj(x) if isinstance(proj, nn.Linear) else x @ proj


def wrap(model: nn.Module, tokenizer, name: str, pretrained: str | None, image_size: int | None,
         resolved: Resolved, device: torch.device) -> OpenClipBackend:
    """The backend for a built open_clip model: its own ViT, or a timm trunk (SigLIP, `open_clip_timm`)."""
    from .open_clip_timm import OpenClipTimmBackend, describe_timm, is_timm_tower

    if is_timm_tower(getattr(model, "visual", None)):
        return OpenClipTimmBackend(model, tokenizer, describe_timm(model, name, pretrained, image_size, resolved),
                                   device)
    return OpenClipBackend(model, tokenizer, describe(model, name, pretrained, image_size, resolved), device)


def describe(model: nn.Module, name: str, pretrained: str | None, image_size: int | None, resolved: Resolved):
    """Check the model is supported and build its ModelConfig."""
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
    size = native if image_size is None else (int(image_size), int(image_size))
    if size[0] < patch[0] or size[0] % patch[0] or size[1] % patch[1]:
        lo = max(patch[0], size[0] // patch[0] * patch[0])
        raise UsageError(f"image size {size[0]} must be a positive multiple of the patch size {patch[0]} "
                         f"(try {lo} or {lo + patch[0]})")
    pp = getattr(v, "preprocess_cfg", {}) or {}
    layers = len(v.transformer.resblocks)
    return ModelConfig(
        name=name, backend="open_clip", pretrained=pretrained, image_size=size, native_image_size=native,
        patch_size=patch, num_prefix_tokens=1, width=v.conv1.out_channels, embed_dim=v.output_dim,
        logit_scale=float(model.logit_scale.detach().exp()),
        mean=tuple(resolved.preprocess.get("mean", pp.get("mean", OPENAI_MEAN))),
        std=tuple(resolved.preprocess.get("std", pp.get("std", OPENAI_STD))),
        target_layer=f"visual.transformer.resblocks.{layers - 1}.ln_1", pooling="cls",
        context_length=int(getattr(model, "context_length", 0) or getattr(model.text, "context_length", 77)),
        default_templates=tuple(resolved.extras["templates"]) if "templates" in resolved.extras else None,
        default_vocab=tuple(resolved.extras["classes"]) if "classes" in resolved.extras else None,
    )
