"""The open_clip backend: open_clip CLIPs with a CLS-pooled ViT (OpenAI, LAION, DFN, BioCLIP, custom
configs) or a timm ViT trunk (SigLIP's attention-pooled towers).

One class, `OpenClipBackend`: the text side is open_clip's; the image side is a tower chosen
by `wrap` from the model, `open_clip_vit.OpenClipViT` or `timm_vit.TimmViT` (`open_clip_timm`).
"""
from __future__ import annotations

import copy
from types import SimpleNamespace

import torch
from torch import nn

from ..config import OPENAI_MEAN, OPENAI_STD, ModelConfig
from ..errors import UsageError, WorkError, first_line
from .base import Backend, TowerImage, check_not_degenerate, require_float32, state_digest, trunk_dtype
from .open_clip_timm import is_timm_tower, timm_fields, timm_tower
from .open_clip_vit import OpenClipViT, vit_fields
from .open_clip_weights import Resolved, resolve
from .registry import register_backend


@register_backend("open_clip")
class OpenClipBackend(TowerImage, Backend):
    """Engine view of an open_clip model; `tower` is its image side (see the module docstring)."""

    token_gradients = True  # embed serves shift.TokenRequest: per-token gradients for HiResCAM, Layer-CAM

    def __init__(self, model: nn.Module, tokenizer, config: ModelConfig, device: torch.device):
        self.model, self.tokenizer, self.config, self.device = model, tokenizer, config, device
        self.autocast_dtype = trunk_dtype(device)
        self._fingerprint: str | None = None
        if is_timm_tower(model.visual):
            self.tower = timm_tower(model, config.grid_size, self.autocast_dtype)
        else:
            self.tower = OpenClipViT(model.visual, config.grid_size, self.autocast_dtype)

    @classmethod
    def from_pretrained(cls, name, *, pretrained, model_config, device, image_size) -> "OpenClipBackend":
        model, resolved, label = load_model(name, pretrained, model_config, device)
        tokenizer = _tokenizer(resolved)
        check_not_degenerate(tokenizer)
        return wrap(model, tokenizer, name, label, image_size, resolved, device)

    @classmethod
    def from_model(cls, model: nn.Module, tokenizer, *, name: str = "custom", image_size: int | None = None,
                   **kwargs) -> "OpenClipBackend":
        """Wrap an open_clip model the caller already holds; it is used as is, never modified.

        Its weights must be float32 (pass `model.float()`); on CUDA the trunk autocasts to bfloat16 itself.
        """
        if kwargs:
            raise UsageError(f"the open_clip backend takes no {', '.join(kwargs)}: they come with the model")
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

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = state_digest(self.model, f"{self.name}|{self.config.name}|", ("visual.",))
        return self._fingerprint


def load_model(name: str, pretrained: str | None, model_config: str | None, device: torch.device,
               refuse_random: str | None = None) -> tuple[nn.Module, Resolved, str | None]:
    """(model on `device` in eval mode, its resolved files, the weights label for its ModelConfig).

    `refuse_random`: the UsageError message to raise instead of building a randomly initialised model.
    """
    resolved = resolve(name, pretrained, model_config)
    if refuse_random is not None and resolved.checkpoint is None:
        raise UsageError(refuse_random)
    model = _build(resolved).to(device).eval()
    label = pretrained if resolved.model_cfg is None or model_config else resolved.checkpoint
    return model, resolved, label


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
        raise WorkError(
            f"could not load weights {what}: {first_line(err)} (only safetensors or weights-only torch checkpoints "
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
    """The backend for a built open_clip model, its ModelConfig read from the model (unsupported towers refused)."""
    v = getattr(model, "visual", None)
    image = timm_fields(model, name, image_size) if is_timm_tower(v) else vit_fields(model, name, image_size)
    config = ModelConfig(**model_fields(model, name, pretrained, resolved), **image)
    return OpenClipBackend(model, tokenizer, config, device)


def model_fields(model: nn.Module, name: str, pretrained: str | None, resolved: Resolved) -> dict:
    """The ModelConfig fields every open_clip model gives the same way, whatever its image tower."""
    pp = getattr(model.visual, "preprocess_cfg", {}) or {}
    text, extras = getattr(model, "text", None), resolved.extras
    return dict(
        name=name, backend="open_clip", pretrained=pretrained, logit_scale=float(model.logit_scale.detach().exp()),
        mean=tuple(resolved.preprocess.get("mean", pp.get("mean", OPENAI_MEAN))),
        std=tuple(resolved.preprocess.get("std", pp.get("std", OPENAI_STD))),
        context_length=int(getattr(model, "context_length", 0) or getattr(text, "context_length", 77)),
        default_templates=tuple(extras["templates"]) if "templates" in extras else None,
        default_vocab=tuple(extras["classes"]) if "classes" in extras else None,
        known_words=tuple(extras["words"]) if "words" in extras else None,
    )
