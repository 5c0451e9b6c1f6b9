"""The Hugging Face transformers backend: `CLIPModel` (CLS pooled) and `SiglipModel` (MAP head).

Targets follow the pooling, read from the loaded model (docs/design.md, "Target activation"):

- CLIP: A = `layer_norm1` of the last encoder layer, all tokens, one prefix (CLS) token.
  Patch tokens reach the pooled CLS output only as keys/values of the CLS query, so
  `embed` runs the CLS attention row, the CLS MLP, `post_layernorm` and
  `visual_projection` (the same shortcut as the open_clip backend).
- SigLIP: no CLS token (0 prefix tokens); the pooled output is the attention-pooling
  (MAP) head over `post_layernorm` of the last layer. A is that `post_layernorm`
  output: it is exactly the head's key/value input, so a shift of every token moves
  every key by W_k s and every value by W_v s and the shortcut stays exact; the trunk
  runs all encoder layers (the MAP head plays the part of "the last block") and `embed`
  is the head: probe-query attention plus its layernorm/MLP residual.

SigLIP's own logits are `exp(logit_scale) * cos + logit_bias`. The bias is the same for
every concept, so no softmax over references and no map depends on it; it is kept in
`config.logit_bias` and the Localizer adds it to the scores it reports.
"""
from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig, as_pair, run_size
from ..errors import UsageError, WorkError
from . import hf_weights
from .base import (Backend, autocast, check_not_degenerate, kept_sequences, require_float32, resample_pos,
                   state_digest, trunk_dtype)
from .registry import register_backend
from ..core.shift import shifted_attention, split_projection


@register_backend("hf")
class HFBackend(Backend):
    """Engine view of a transformers `CLIPModel` or `SiglipModel`."""

    token_gradients = True  # embed serves shift.TokenRequest: per-token gradients for HiResCAM, Layer-CAM

    def __init__(self, model: nn.Module, tokenizer: "TextTokenizer", config: ModelConfig, device: torch.device):
        self.model, self.tokenizer, self.config, self.device = model, tokenizer, config, device
        self.autocast_dtype = trunk_dtype(device)
        self._layer_kwargs = _layer_kwargs(model.vision_model.encoder.layers[0])
        self._fingerprint: str | None = None

    @classmethod
    def from_pretrained(cls, name, *, pretrained, model_config, device, image_size) -> "HFBackend":
        folder = hf_weights.resolve_folder(name, pretrained, model_config)
        kind = hf_weights.model_type(folder)
        model = hf_weights.load_model(folder, kind).to(device)
        tokenizer = hf_weights.load_tokenizer(folder)
        config = describe(model, name, str(folder), image_size, hf_weights.preprocess(folder, kind))
        return cls(model, check_tokenizer(tokenizer, model, config.context_length), config, device)

    @classmethod
    def from_model(cls, model: nn.Module, tokenizer, *, name: str = "custom", image_size: int | None = None,
                   mean=None, std=None) -> "HFBackend":
        """Wrap a `CLIPModel`/`SiglipModel` the caller holds; it is used as is, never modified.

        Args:
            tokenizer: the model's transformers tokenizer.
            mean, std: pixel normalisation; default: the family's (OpenAI CLIP's, or 0.5 for SigLIP).

        Its weights must be float32 (pass `model.float()`); on CUDA the trunk autocasts to bfloat16 itself.
        """
        kind = getattr(model.config, "model_type", None)
        if kind not in hf_weights.SUPPORTED:
            raise UsageError(f"{name}: {type(model).__name__} is not supported by the hf backend")
        require_float32(model, name)
        _, dmean, dstd = hf_weights.SUPPORTED[kind]
        config = describe(model, name, None, image_size, (tuple(mean or dmean), tuple(std or dstd)))
        return cls(model, check_tokenizer(tokenizer, model, config.context_length), config,
                   next(model.parameters()).device)

    # text -----------------------------------------------------------------
    def tokenize(self, texts: list[str]) -> torch.Tensor:
        return self.tokenizer(texts).to(self.device)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """Text embeddings; CLIP's causal tower is cut after the last pooled (EOS) token.

        The cut is exact: with a causal mask the pooled token attends only to earlier
        tokens. SigLIP's tower is bidirectional and pools the LAST position of a
        max-length sequence, so its tokens are used whole, padding included, without
        an attention mask (as the model was trained).
        """
        text = self.model.text_model
        with torch.inference_mode():
            if self.model.config.model_type == "clip":
                tokens = tokens[:, :int(_eos_positions(tokens, text.config).max()) + 1]
            out = text(input_ids=tokens).pooler_output
            projection = getattr(self.model, "text_projection", None)
            return (projection(out) if projection is not None else out).float()

    # image ----------------------------------------------------------------
    def trunk(self, pixels: torch.Tensor) -> torch.Tensor:
        """Stream entering the last encoder layer (CLIP) or the MAP head (SigLIP)."""
        v = self.model.vision_model
        layers = v.encoder.layers if self.config.pooling == "map" else v.encoder.layers[:-1]
        with torch.inference_mode(), autocast(self.device, self.autocast_dtype):
            x = self._layers(self._embedded(pixels), layers)
        return x.float().clone()  # a normal tensor, usable by autograd

    def encode_kept(self, pixels: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """`Backend.encode_kept`: the CLS token (CLIP; SigLIP has none) plus the patch tokens `keep`
        (B, S, n), dropped after the position embedding, through every layer, then the model's own
        pooling (CLS and projection, or the MAP head): (B, S, E) float32, grad-free."""
        v = self.model.vision_model
        with torch.inference_mode(), autocast(self.device, self.autocast_dtype):
            tokens = kept_sequences(self._embedded(pixels), keep, self.config.num_prefix_tokens)
            x = v.post_layernorm(self._layers(tokens, v.encoder.layers))
            out = v.head(x) if self.config.pooling == "map" else self.model.visual_projection(x[:, 0])
        return out.float().reshape(*keep.shape[:2], -1).clone()

    def _embedded(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, T, D): patch embedding, CLS token (CLIP) and position embedding (under the trunk's autocast)."""
        emb, prefix = self.model.vision_model.embeddings, self.config.num_prefix_tokens
        x = emb.patch_embedding(pixels.to(self.device, emb.patch_embedding.weight.dtype))
        x = x.flatten(2).transpose(1, 2)
        if prefix:
            x = torch.cat([emb.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1), x], dim=1)
        # no antialiasing: the numbers of the model's own `interpolate_pos_encoding=True`, so
        # `get_image_features(..., interpolate_pos_encoding=True)` is the reference at any size
        return x + resample_pos(emb.position_embedding.weight, self.config.grid_size, _native_grid(self.config),
                                prefix, antialias=False).to(x.dtype)

    def _layers(self, x: torch.Tensor, layers) -> torch.Tensor:
        """`pre_layrnorm` (CLIP, per token), then the encoder `layers`, without masks."""
        pre = getattr(self.model.vision_model, "pre_layrnorm", None)
        x = pre(x) if pre is not None else x
        for layer in layers:
            out = layer(x, None, **self._layer_kwargs)
            x = out[0] if isinstance(out, tuple) else out
        return x

    def target(self, stream: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.target_module()(stream)

    def embed(self, stream, target, shift, cache=None) -> torch.Tensor:
        v = self.model.vision_model
        if self.config.pooling == "map":
            return _map_head(v.head, target, shift, cache)
        layer = v.encoder.layers[-1]
        attn = layer.self_attn
        proj = tuple((p.weight, p.bias) for p in (attn.q_proj, attn.k_proj, attn.v_proj))
        out = shifted_attention(target[:, :1], target, proj, attn.num_heads, attn.scale, shift,
                                self.config.num_prefix_tokens, cache)
        x = stream[:, :1] + attn.out_proj(out[:, :, 0])  # (B, M, D): the CLS residual, one per shift
        x = x + layer.mlp(layer.layer_norm2(x))
        return self.model.visual_projection(v.post_layernorm(x))

    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """The vision model's own forward (`interpolate_pos_encoding=True`), then the projection (CLIP):
        what `get_image_features` gives; (B, E) float32 under the caller's grad mode."""
        v = self.model.vision_model
        with autocast(self.device, self.autocast_dtype):
            out = v(pixel_values=pixels.to(self.device, v.embeddings.patch_embedding.weight.dtype),
                    interpolate_pos_encoding=True).pooler_output
            return (self.model.visual_projection(out) if self.config.pooling == "cls" else out).float()

    def target_module(self) -> nn.Module:
        v = self.model.vision_model
        return v.post_layernorm if self.config.pooling == "map" else v.encoder.layers[-1].layer_norm1

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            tok = self.tokenizer.hf
            self._fingerprint = state_digest(self.model, f"{self.name}|{self.config.name}|{type(tok).__name__}|"
                                             f"{len(tok)}|", ("vision_model.", "visual_projection."))
        return self._fingerprint


class TextTokenizer:
    """A transformers tokenizer seen as `texts -> ids (n, context_length)`, padded to the context.

    Padding to the full context is what SigLIP needs (its tower pools the last position,
    and `SiglipTokenizer` pads with `</s>`); CLIP's tower is cut after its EOS anyway.
    `encode` gives the ids without special tokens, as open_clip's tokenizers do, and
    `num_special_tokens` how many the tokenizer adds to one text (CLIP: start and end, 2;
    SigLIP: only `</s>`, 1), for the prompt-length warning in text.py.
    """

    def __init__(self, tokenizer, context_length: int):
        self.hf, self.context_length = tokenizer, context_length
        self.num_special_tokens = int(tokenizer.num_special_tokens_to_add(pair=False))

    def __call__(self, texts: list[str]) -> torch.Tensor:
        return self.hf(list(texts), padding="max_length", max_length=self.context_length, truncation=True,
                       return_tensors="pt")["input_ids"]

    def encode(self, text: str) -> list[int]:
        """Ids without special tokens; verbose=False: text.py warns about long prompts itself, once,
        where transformers would log "Token indices sequence length is longer than ..." as well."""
        return self.hf.encode(text, add_special_tokens=False, verbose=False)


def check_tokenizer(tokenizer, model: nn.Module, context_length: int) -> TextTokenizer:
    """The transformers tokenizer as the backend uses it, refused when it cannot be the model's own.

    Degenerate tokenizers are caught as for open_clip (`base.check_not_degenerate`); ids
    beyond the text tower's vocabulary would index out of range.
    """
    text = TextTokenizer(tokenizer, context_length)
    ids = check_not_degenerate(text)
    vocab = model.text_model.config.vocab_size
    if int(ids.max()) >= vocab:
        raise WorkError(f"the tokenizer gives id {int(ids.max())} but the text tower has {vocab} tokens: "
                        "tokenizer and model do not belong together")
    return text


def _map_head(head: nn.Module, a: torch.Tensor, shift: torch.Tensor, cache: dict | None) -> torch.Tensor:
    """SigLIP's attention-pooling head over A (+ shift on every token): (B, M, E).

    Departure from the module's own forward: the probe's attention is computed with the
    shift trick (`shift.shifted_attention`) instead of nn.MultiheadAttention, so all M
    shifts share one key/value projection.
    """
    mha = head.attention
    proj = split_projection(mha.in_proj_weight, mha.in_proj_bias, 3)
    out = shifted_attention(head.probe, a, proj, mha.num_heads, mha.head_dim**-0.5, shift, 0, cache)
    h = F.linear(out[:, :, 0], mha.out_proj.weight, mha.out_proj.bias)
    return h + head.mlp(head.layernorm(h))


def _eos_positions(tokens: torch.Tensor, text_config) -> torch.Tensor:
    """Where CLIPTextModel pools: the first EOS id, or the largest id for legacy configs (eos_token_id 2)."""
    eos = text_config.eos_token_id
    if eos == 2 or eos is None:
        return tokens.argmax(dim=-1)
    return (tokens == eos).int().argmax(dim=-1)


def _layer_kwargs(layer: nn.Module) -> dict:
    """Keywords to run an encoder layer without masks (layer(x, None, **kw)); transformers 4.x needs
    `causal_attention_mask` (and returns tuples)."""
    return {"causal_attention_mask": None} if "causal_attention_mask" in inspect.signature(layer.forward).parameters \
        else {}


def _native_grid(config: ModelConfig) -> tuple[int, int]:
    (h, w), (ph, pw) = config.native_image_size, config.patch_size
    return h // ph, w // pw


def describe(model: nn.Module, name: str, pretrained: str | None, image_size: int | None, mean_std) -> ModelConfig:
    """Check the model is supported and build its ModelConfig from the model's own config."""
    kind = model.config.model_type
    v = model.vision_model
    pooling = "map" if kind == "siglip" else "cls"
    if pooling == "map":
        head = getattr(v, "head", None) if getattr(v, "use_head", False) else None
        mha = getattr(head, "attention", None)
        if not isinstance(mha, nn.MultiheadAttention) or not mha._qkv_same_embed_dim or mha.bias_k is not None \
                or mha.add_zero_attn:
            raise UsageError(f"{name}: only SigLIP towers with the standard attention-pooling head are supported")
    vc = model.config.vision_config
    patch, native = as_pair(vc.patch_size), as_pair(vc.image_size)
    size = run_size(native, patch, image_size)
    layers = len(v.encoder.layers)
    mean, std = mean_std
    bias = getattr(model, "logit_bias", None)
    return ModelConfig(
        name=name, backend="hf", pretrained=pretrained, image_size=size, native_image_size=native,
        patch_size=patch, num_prefix_tokens=1 if pooling == "cls" else 0, width=vc.hidden_size,
        embed_dim=int(model.config.projection_dim) if pooling == "cls" else vc.hidden_size,
        logit_scale=float(model.logit_scale.detach().float().exp().reshape(-1)[0]),
        mean=tuple(mean), std=tuple(std),
        target_layer="vision_model.post_layernorm" if pooling == "map"
        else f"vision_model.encoder.layers.{layers - 1}.layer_norm1",
        pooling=pooling, context_length=int(model.config.text_config.max_position_embeddings),
        logit_bias=float(bias.detach().float().reshape(-1)[0]) if bias is not None else 0.0,
    )

