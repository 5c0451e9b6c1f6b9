"""Linear probes: a trained `nn.Linear` over a frozen image tower (the Finer-CAM paper's setting).

The head is z = W e + b over the tower's pooled feature e, with no normalisation and no
scale. The bias is folded in: `embed` returns [e, 1] and the head rows are [W | b], so
the engine's linear head z = [e, 1] @ [W | b]^T is exact and every objective still comes
from one backward (config.cosine_head is False, so `logit_scale` is None).

Towers:
- any image tower the open_clip backend loads; e = its own pooled, projected embedding
  (what `encode_image` returns, unnormalised);
- a timm ViT (`timm:NAME`); e = timm's pooled feature, by default the mean of the
  final-normed patch tokens (prefix tokens excluded), which is the official Finer-CAM
  feature for DINOv2 (`x_norm_patchtokens.mean(1)`). Mean pooling makes every token depend
  on the shift, so `embed` runs the last block on B x M copies (see `timm_vit`).

Departures from the official code (Imageomics/Finer-CAM `generate_cams.py`, tutorial):
- its `reshape_transform` drops ONE token, which shifts the grid for DINOv2 with
  registers; we drop all `num_prefix_tokens`;
- it runs the 518-pixel DINOv2 at 224 through DINOv2's own position interpolation; we
  run at the model's native size unless `image_size` is given (pass 224 to match), and
  resample with timm's bicubic resampling, so values differ slightly at other sizes;
- `generate_cams.py` normalises pixels with CLIP's mean/std, its training script with
  ImageNet's; we use the timm model's own (ImageNet for DINOv2), as the probe was trained;
- the objective drops the official 1e-9 epsilon (see `zsfinercam.core.objectives`).
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
from pathlib import Path

import torch

from ..config import ModelConfig
from ..errors import UsageError, WorkError, first_line
from .base import Backend, TowerImage, trunk_dtype
from .open_clip_weights import hub_file, read_json_object
from .timm_vit import TimmViT, check_vit, vit_fields

TIMM_PREFIX = "timm:"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# The official Finer-CAM probe feature: final norm, then the mean over patch tokens (no fc_norm).
TIMM_PROBE_DEFAULTS = {"num_classes": 0, "global_pool": "avg", "fc_norm": False}
RANDOM_TOWER = ("{name} without pretrained= would be a randomly initialised tower, meaningless under a probe "
                "trained on real features; pass pretrained= with the weights the probe was trained on (a tag such "
                "as 'openai' or a weights file)")
TEXT_ONLY = ("{name} is a linear-probe model over {n} fixed classes: text prompts, templates, text "
             "neighbours and text-based contrast are not available; name its classes instead")


class ProbeBackend(TowerImage, Backend):
    """Engine view of a linear classifier over an image tower. Built by `Localizer.from_classifier`.

    Not in the backend registry: it needs a classifier and class names, not only a model name.
    """

    token_gradients = True  # embed serves shift.TokenRequest: per-token gradients for HiResCAM, Layer-CAM

    name = "probe"

    def __init__(self, tower, weight: torch.Tensor, bias: torch.Tensor, classes: list[str], config: ModelConfig,
                 device: torch.device):
        self.tower, self.config, self.device = tower, config, device
        self.classes = list(classes)
        self.table = torch.cat([weight, bias[:, None]], dim=1).float().to(device)  # (C, E + 1) = [W | b]
        self.index = {c: i for i, c in enumerate(self.classes)}
        self._fingerprint: str | None = None

    @classmethod
    def from_pretrained(cls, name, *, pretrained, model_config, device, image_size):
        raise UsageError("a linear probe needs its classifier and class names: use "
                         "Localizer.from_classifier(backbone, classifier=..., classes=...)")

    # the head -----------------------------------------------------------------
    def head_rows(self, concepts: list[str], templates=None) -> torch.Tensor:
        """The classifier rows [W | b] of the named classes (K, E + 1)."""
        if templates is not None:
            raise UsageError(self._text_only())
        missing = [c for c in concepts if c not in self.index]
        if missing:
            close = difflib.get_close_matches(missing[0], self.classes, n=3)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else \
                f" (it has {len(self.classes)} classes, e.g. {', '.join(map(repr, self.classes[:3]))})"
            raise UsageError(f"{missing[0]!r} is not a class of this classifier{hint}")
        return self.table[[self.index[c] for c in concepts]]

    def _text_only(self) -> str:
        return TEXT_ONLY.format(name=self.config.name, n=len(self.classes))

    def tokenize(self, texts):
        raise UsageError(self._text_only())

    def encode_text(self, tokens):
        raise UsageError(self._text_only())

    def fingerprint(self) -> str:
        """A key that changes whenever the head does: the classifier rows [W | b], the class
        names and the tower (name and weights label). There is no text tower; batch runs keep it
        in their settings, so a run resumed with another classifier is refused."""
        if self._fingerprint is None:
            digest = hashlib.blake2b(digest_size=16)
            digest.update(json.dumps([self.name, self.config.name, self.config.pretrained, self.classes]).encode())
            digest.update(self.table.detach().cpu().numpy().tobytes())
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    # image (trunk, target and target_module: the tower's) -----------------------
    def embed(self, stream, target, shift, cache=None) -> torch.Tensor:
        """[e, 1] (B, M, E + 1): the tower's feature and the constant that carries the bias."""
        return _with_one(self.tower.embed(stream, target, shift, cache))

    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """[e, 1] (B, E + 1) of the tower's plain forward, as `embed` gives it at zero shift."""
        return _with_one(self.tower.encode_pixels(pixels))

    def encode_kept(self, pixels: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """[e, 1] (B, S, E + 1) of the tower run on the kept tokens only (`Backend.encode_kept`)."""
        return _with_one(self.tower.encode_kept(pixels, keep))


def _with_one(e: torch.Tensor) -> torch.Tensor:
    """[e, 1]: the feature and the constant that carries the bias."""
    return torch.cat([e, e.new_ones(*e.shape[:-1], 1)], dim=-1)


def probe_config(tower_config: ModelConfig, classes: list[str]) -> ModelConfig:
    """The tower's card, turned into a probe's: plain linear head over fixed classes."""
    return dataclasses.replace(tower_config, backend="probe", logit_scale=1.0, cosine_head=False, logit_bias=0.0,
                               default_vocab=tuple(classes), default_templates=None, context_length=0)


# towers -----------------------------------------------------------------------
def load_tower(backbone: str, *, pretrained, model_config, device: torch.device, image_size):
    """(tower with trunk/target/embed and `jacobian_chunk`, its ModelConfig) for `backbone`.

    Weights: an open_clip tower needs them (`pretrained` tag or file, or a local-dir:/hf-hub:
    folder, or the toy); None would give a random tower and is refused. For "timm:NAME",
    `pretrained` None means timm's own hub weights for NAME.
    """
    if not isinstance(backbone, str) or not backbone.strip():
        raise UsageError("backbone must be a model name, e.g. 'ViT-B-16' or 'timm:vit_base_patch14_dinov2'")
    if backbone.startswith(TIMM_PREFIX):
        return _timm_tower(backbone[len(TIMM_PREFIX):], pretrained, model_config, device, image_size)
    return _open_clip_tower(backbone, pretrained, model_config, device, image_size)


def _open_clip_tower(name, pretrained, model_config, device, image_size):
    from .open_clip import load_model, wrap

    model, resolved, label = load_model(name, pretrained, model_config, device, RANDOM_TOWER.format(name=name))
    tower = wrap(model, None, name, label, image_size, resolved, device)  # the text tower is never used
    return tower, tower.config


def _timm_tower(name: str, pretrained, model_config, device, image_size):
    vit = _create_timm(name, _timm_overrides(model_config))
    check_vit(vit, f"timm:{name}")
    checkpoint = pretrained or _timm_hub_weights(name, vit)
    load_timm_weights(vit, checkpoint, f"timm:{name}")
    vit = vit.to(device).eval()
    cfg = getattr(vit, "pretrained_cfg", {}) or {}
    config = ModelConfig(
        name=f"timm:{name}", backend="probe", pretrained=str(checkpoint), **vit_fields(vit, image_size, "trunk"),
        embed_dim=int(vit.num_features), logit_scale=1.0, mean=tuple(cfg.get("mean", IMAGENET_MEAN)),
        std=tuple(cfg.get("std", IMAGENET_STD)), context_length=0, cosine_head=False)
    return TimmViT(vit, None, config.grid_size, trunk_dtype(device)), config


def _timm_overrides(model_config) -> dict:
    """timm.create_model keyword overrides from a JSON file (e.g. {"img_size": 224})."""
    if model_config is None:
        return {}
    return read_json_object(Path(model_config), "model config", "a JSON object of timm.create_model keyword arguments")


def _create_timm(name: str, overrides: dict):
    import timm

    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models("vit_*"), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UsageError(f"unknown timm model {name!r}{hint}")
    try:
        return timm.create_model(name, pretrained=False, **{**TIMM_PROBE_DEFAULTS, **overrides})
    except (TypeError, AssertionError, ValueError) as err:
        raise UsageError(f"timm:{name} cannot be built with {overrides or 'its defaults'}: {err}") from None


def _timm_hub_weights(name: str, vit) -> str:
    """A local copy of timm's pretrained weights: the hub cache, else a download when the hub is reachable."""
    hub_id = (getattr(vit, "pretrained_cfg", {}) or {}).get("hf_hub_id")
    if not hub_id:
        raise UsageError(f"timm:{name} has no Hugging Face hub weights; pass pretrained=/path/to/weights")
    return hub_file(hub_id, ("model.safetensors", "pytorch_model.bin"), f"timm:{name}",
                     hint="pretrained=/path/to/weights.safetensors (timm or original .pth layout)")


def load_timm_weights(vit, path: str, what: str) -> None:
    """Load a timm or original-format (e.g. DINOv2 hub .pth) checkpoint; a one-line error otherwise."""
    from timm.models.vision_transformer import checkpoint_filter_fn

    state = read_state_dict(path)
    try:
        state = checkpoint_filter_fn(state, vit)
    except (KeyError, RuntimeError, ValueError) as err:
        raise WorkError(f"could not convert {path} for {what}: {err}") from None
    state = {k: v for k, v in state.items() if not k.startswith("head.")}  # a classifier we do not use
    result = vit.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        keys = (result.missing_keys or result.unexpected_keys)[:3]
        kind = "lacks" if result.missing_keys else "has unexpected"
        raise WorkError(f"weights {path} do not match {what}: the file {kind} {', '.join(keys)}")


def read_state_dict(path: str) -> dict:
    """A tensor dict from .safetensors or a weights-only torch file (.pth/.pt/.bin)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise UsageError(f"file not found: {path}" if not p.exists() else f"{path} is a folder, not a file")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(p))
        state = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch/safetensors raise many types for bad files
        raise WorkError(f"could not read {path}: {first_line(err)} (only safetensors or weights-only torch files)") from None
    if not isinstance(state, dict):
        raise WorkError(f"{path} holds a {type(state).__name__}, not a state dict of tensors")
    return state
