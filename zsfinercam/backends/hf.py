"""The Hugging Face transformers backend: `CLIPModel` (CLS pooled) and `SiglipModel` (MAP head).

Targets follow the pooling, read from the loaded model (DESIGN.md, "Target activation"):

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

import hashlib
import inspect

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from ..errors import UsageError, WorkError
from . import hf_weights
from .base import Backend
from .open_clip import require_float32
from .registry import register_backend


@register_backend("hf")
class HFBackend(Backend):
    """Engine view of a transformers `CLIPModel` or `SiglipModel`."""

    def __init__(self, model: nn.Module, tokenizer, config: ModelConfig, device: torch.device):
        self.model, self.config, self.device = model, config, device
        self.tokenizer = TextTokenizer(tokenizer, config.context_length)
        self.autocast_dtype = torch.bfloat16 if device.type == "cuda" else None
        self._fingerprint: str | None = None

    @classmethod
    def from_pretrained(cls, name, *, pretrained, model_config, device, image_size) -> "HFBackend":
        folder = hf_weights.resolve_folder(name, pretrained, model_config)
        kind = hf_weights.model_type(folder)
        model = hf_weights.load_model(folder, kind).to(device)
        tokenizer = hf_weights.load_tokenizer(folder)
        config = describe(model, name, str(folder), image_size, hf_weights.preprocess(folder, kind))
        check_tokenizer(tokenizer, model, config.context_length)
        return cls(model, tokenizer, config, device)

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
        check_tokenizer(tokenizer, model, config.context_length)
        return cls(model, tokenizer, config, next(model.parameters()).device)

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
        emb, prefix = v.embeddings, self.config.num_prefix_tokens
        layers = v.encoder.layers if self.config.pooling == "map" else v.encoder.layers[:-1]
        with torch.inference_mode(), _autocast(self.device, self.autocast_dtype):
            x = emb.patch_embedding(pixels.to(self.device, emb.patch_embedding.weight.dtype))
            x = x.flatten(2).transpose(1, 2)
            if prefix:
                x = torch.cat([emb.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1), x], dim=1)
            x = x + self._pos_embed(self.config.grid_size).to(x.dtype)
            if getattr(v, "pre_layrnorm", None) is not None:
                x = v.pre_layrnorm(x)
            for layer in layers:
                x = _run_layer(layer, x)
        return x.float().clone()  # a normal tensor, usable by autograd

    def _pos_embed(self, grid: tuple[int, int]) -> torch.Tensor:
        """Position embeddings on `grid`; resampled like the model's `interpolate_pos_encoding=True`.

        Bicubic, align_corners=False, no antialiasing, prefix rows kept: the same numbers
        transformers computes, so `get_image_features(..., interpolate_pos_encoding=True)`
        is the reference at any size. (The open_clip backend uses timm's antialiased
        default; the two differ only when shrinking.)
        """
        pe = self.model.vision_model.embeddings.position_embedding.weight[None]
        native = _native_grid(self.model)
        if grid == native:
            return pe
        from timm.layers import resample_abs_pos_embed

        return resample_abs_pos_embed(pe, new_size=list(grid), old_size=list(native), antialias=False,
                                      num_prefix_tokens=self.config.num_prefix_tokens)

    def target(self, stream: torch.Tensor) -> torch.Tensor:
        v = self.model.vision_model
        with torch.no_grad():
            if self.config.pooling == "map":
                return v.post_layernorm(stream)
            return v.encoder.layers[-1].layer_norm1(stream)

    def embed(self, stream, target, shift, cache=None) -> torch.Tensor:
        v = self.model.vision_model
        if self.config.pooling == "map":
            return _map_head(v.head, target, shift, cache)
        layer = v.encoder.layers[-1]
        attn = layer.self_attn
        if cache is not None and "hf_cls_q" in cache:
            q = cache["hf_cls_q"]
        else:
            with torch.no_grad():
                q = (attn.q_proj(target[:, 0]) * attn.scale).view(target.shape[0], attn.num_heads, -1)
            if cache is not None:
                cache["hf_cls_q"] = q
        out = query_attention(q, target, attn.k_proj, attn.v_proj, shift, self.config.num_prefix_tokens, cache)
        x = stream[:, :1] + attn.out_proj(out)  # (B, M, D): the CLS residual, one per shift
        x = x + layer.mlp(layer.layer_norm2(x))
        return self.model.visual_projection(v.post_layernorm(x))

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            digest = hashlib.blake2b(digest_size=16)
            tok = self.tokenizer.hf
            digest.update(f"{self.name}|{self.config.name}|{type(tok).__name__}|{len(tok)}|".encode())
            for key, tensor in self.model.state_dict().items():
                if not key.startswith(("vision_model.", "visual_projection.")):
                    digest.update(key.encode())
                    digest.update(tensor.detach().float().cpu().numpy().tobytes())
            self._fingerprint = digest.hexdigest()
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


def check_tokenizer(tokenizer, model: nn.Module, context_length: int) -> None:
    """Refuse tokenizers that cannot be the model's own.

    Offline hubs can hand back a two-token tokenizer that maps every text to one id
    (DESIGN.md); ids beyond the text tower's vocabulary would index out of range.
    """
    ids = TextTokenizer(tokenizer, context_length)(["a photo of a cat.", "a photo of a dog."])
    if torch.equal(ids[0], ids[1]):
        raise WorkError("the tokenizer loaded maps different texts to the same tokens: it is not the model's "
                        "real tokenizer (offline hub?); pass a local model folder with --model local-dir:PATH")
    vocab = model.text_model.config.vocab_size
    if int(ids.max()) >= vocab:
        raise WorkError(f"the tokenizer gives id {int(ids.max())} but the text tower has {vocab} tokens: "
                        "tokenizer and model do not belong together")


def query_attention(q: torch.Tensor, a: torch.Tensor, k_proj, v_proj, shift: torch.Tensor, prefix: int,
                    cache: dict | None = None) -> torch.Tensor:
    """One query's multi-head attention over A, once per shift added to the patch tokens, before out_proj.

    `q` (B, H, hd) is already scaled. `k_proj`/`v_proj` are (weight, bias) pairs or
    nn.Linear. Keys and values are linear in A, so a shift s moves every patch key by
    W_k s and every value by W_v s: the shared part is computed once without grad (and
    kept in `cache`), only the (B, M, H) score offsets and (B, M, D) value offsets carry
    the shift. With no prefix tokens every key moves by the same score offset, which the
    softmax cancels, so only the value offset is kept. Returns (B, M, D).
    """
    (wk, bk), (wv, bv) = _weight_bias(k_proj), _weight_bias(v_proj)
    batch, tokens, width = a.shape
    heads, hd = q.shape[1], q.shape[2]
    if cache is not None and "hf_vb" in cache:
        v, base = cache["hf_vb"]
    else:
        with torch.no_grad():
            v = F.linear(a, wv, bv).view(batch, tokens, heads, hd)
            base = torch.einsum("bhd,bthd->bht", q, F.linear(a, wk, bk).view(batch, tokens, heads, hd))
        if cache is not None:
            cache["hf_vb"] = (v, base)
    m = shift.shape[1]
    dv = (shift @ wv.T).view(batch, m, heads, hd)
    if prefix == 0:  # every key moves by the same score offset, which the softmax cancels exactly
        weights = base[:, None].softmax(dim=-1).expand(-1, m, -1, -1)
    else:
        offset = torch.einsum("bhd,bmhd->bmh", q, (shift @ wk.T).view(batch, m, heads, hd))
        offset = F.pad(offset[..., None].expand(-1, -1, -1, tokens - prefix), (prefix, 0))
        weights = (base[:, None] + offset).softmax(dim=-1)  # (B, M, H, T)
    out = torch.einsum("bmht,bthd->bmhd", weights, v) + weights[..., prefix:].sum(-1, keepdim=True) * dv
    return out.reshape(batch, m, width)


def _map_head(head: nn.Module, a: torch.Tensor, shift: torch.Tensor, cache: dict | None) -> torch.Tensor:
    """SigLIP's attention-pooling head over A (+ shift on every token): (B, M, E).

    Departure from the module's own forward: the probe's attention is computed with the
    shift trick instead of nn.MultiheadAttention, so all M shifts share one key/value
    projection. (With no prefix tokens the key offset is the same for every token and
    cancels in the softmax; only the value path carries gradient, as in the model.)
    """
    mha = head.attention
    wq, wk, wv = mha.in_proj_weight.chunk(3)
    bq, bk, bv = mha.in_proj_bias.chunk(3) if mha.in_proj_bias is not None else (None, None, None)
    hd = mha.embed_dim // mha.num_heads
    q = (F.linear(head.probe[:, 0], wq, bq) * hd**-0.5).view(1, mha.num_heads, hd).expand(a.shape[0], -1, -1)
    out = query_attention(q, a, (wk, bk), (wv, bv), shift, 0, cache)
    h = F.linear(out, mha.out_proj.weight, mha.out_proj.bias)
    return h + head.mlp(head.layernorm(h))


def _weight_bias(proj) -> tuple[torch.Tensor, torch.Tensor | None]:
    return (proj.weight, proj.bias) if isinstance(proj, nn.Module) else proj


def _eos_positions(tokens: torch.Tensor, text_config) -> torch.Tensor:
    """Where CLIPTextModel pools: the first EOS id, or the largest id for legacy configs (eos_token_id 2)."""
    eos = text_config.eos_token_id
    if eos == 2 or eos is None:
        return tokens.argmax(dim=-1)
    return (tokens == eos).int().argmax(dim=-1)


def _run_layer(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """One encoder layer without masks; transformers 4.x needs `causal_attention_mask` and returns tuples."""
    extra = {"causal_attention_mask": None} if "causal_attention_mask" in inspect.signature(layer.forward).parameters \
        else {}
    out = layer(x, None, **extra)
    return out[0] if isinstance(out, tuple) else out


def _autocast(device: torch.device, dtype):
    if dtype is None:
        return torch.autocast("cpu", enabled=False)
    return torch.autocast(device.type, dtype=dtype)


def _pair(value) -> tuple[int, int]:
    return (int(value), int(value)) if isinstance(value, int) else (int(value[0]), int(value[1]))


def _native_grid(model: nn.Module) -> tuple[int, int]:
    vc = model.config.vision_config
    size, patch = _pair(vc.image_size), _pair(vc.patch_size)
    return size[0] // patch[0], size[1] // patch[1]


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
    patch, native = _pair(vc.patch_size), _pair(vc.image_size)
    size = native if image_size is None else _pair(image_size)
    if size[0] < patch[0] or size[1] < patch[1] or size[0] % patch[0] or size[1] % patch[1]:
        lo = max(patch[0], size[0] // patch[0] * patch[0])
        raise UsageError(f"image size {size[0]} must be a positive multiple of the patch size {patch[0]} "
                         f"(try {lo} or {lo + patch[0]})")
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

