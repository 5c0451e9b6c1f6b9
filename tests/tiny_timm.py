"""Tiny random timm-trunk models: an open_clip SigLIP-style CLIP and a DINOv2-style linear probe.

Both are saved to files and re-loaded through the real loaders. open_clip builds a timm tower
only from a registered timm name (its config passes no size arguments to timm), so a tiny
SigLIP-shaped ViT is registered under `TINY_SIGLIP` (no class token, MAP pooling, a
non-square 32x48 input: a 4x6 patch grid).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch

TINY_SIGLIP = "zsf_test_tiny_siglip"
SIGLIP_TEXT = {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1,
               "no_causal_mask": True, "proj_bias": True, "pool_type": "last"}
# DINOv2 with 4 registers, shrunk: 5 prefix tokens, a 4x4 grid; layer scale 1 as in the official script.
TINY_DINO = "vit_base_patch14_reg4_dinov2"
DINO_OVERRIDES = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2, "init_values": 1.0}
PROBE_CLASSES = ["sparrow", "finch", "robin", "wren", "warbler", "tit"]


def register_tiny_siglip() -> None:
    """Register the tiny SigLIP-shaped timm ViT once per process."""
    import timm
    from timm.models import register_model
    from timm.models.vision_transformer import _create_vision_transformer

    if timm.is_model(TINY_SIGLIP):
        return

    def zsf_test_tiny_siglip(pretrained: bool = False, **kwargs):
        args = dict(img_size=(32, 48), patch_size=8, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2,
                    class_token=False, global_pool="map")
        return _create_vision_transformer(TINY_SIGLIP, pretrained=pretrained, **{**args, **kwargs})

    register_model(zsf_test_tiny_siglip)


def scramble(model: torch.nn.Module, seed: int) -> None:
    """Unit-gain weights: timm's 0.02-std init gives near-uniform attention and flat maps."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("pos_embed", "cls_token", "reg_token", "latent")):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
            elif p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p[0].numel()))
            elif "logit" not in name:
                p.add_(0.1 * torch.randn(p.shape, generator=gen))


def siglip_cfg(timm_name: str = TINY_SIGLIP, pool: str = "map", proj: str = "none", embed_dim: int = 32) -> dict:
    return {"embed_dim": embed_dim, "init_logit_bias": -10, "custom_text": True,
            "vision_cfg": {"image_size": [32, 48], "timm_model_name": timm_name, "timm_model_pretrained": False,
                           "timm_pool": pool, "timm_proj": proj},
            "text_cfg": dict(SIGLIP_TEXT)}


def save_tiny_siglip(folder: Path, cfg: dict | None = None, seed: int = 0) -> tuple[Path, Path]:
    """A random open_clip CustomTextCLIP with a timm tower, as config.json + weights.safetensors."""
    import open_clip
    from safetensors.torch import save_file

    register_tiny_siglip()
    cfg = cfg or siglip_cfg()
    torch.manual_seed(seed)
    model = open_clip.CustomTextCLIP(**{k: v for k, v in cfg.items() if k != "custom_text"})
    scramble(model.visual, seed)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(10.0))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(cfg))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "weights.safetensors"))
    return folder / "config.json", folder / "weights.safetensors"


def tiny_dino(seed: int = 0):
    import timm

    torch.manual_seed(seed)
    vit = timm.create_model(TINY_DINO, pretrained=False, num_classes=0, **DINO_OVERRIDES)
    scramble(vit, seed)
    return vit


def save_tiny_probe(folder: Path, seed: int = 0, classes: list[str] | None = None) -> dict[str, Path]:
    """Backbone weights, timm overrides, an official-layout classifier_*.pth and a class list."""
    from safetensors.torch import save_file

    classes = classes or PROBE_CLASSES
    folder.mkdir(parents=True, exist_ok=True)
    vit = tiny_dino(seed)
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(folder / "dino.safetensors"))
    (folder / "dino.json").write_text(json.dumps(DINO_OVERRIDES))
    torch.manual_seed(seed + 1)
    head = torch.nn.Linear(DINO_OVERRIDES["embed_dim"], len(classes))
    with torch.no_grad():
        head.weight.mul_(4.0)
    torch.save(head.state_dict(), folder / "classifier_birds_DINO.pth")  # as the official repo saves it
    (folder / "classes.txt").write_text("\n".join(classes) + "\n", encoding="utf-8")
    return {"weights": folder / "dino.safetensors", "config": folder / "dino.json",
            "classifier": folder / "classifier_birds_DINO.pth", "classes": folder / "classes.txt"}


def load_tiny_probe(files: dict[str, Path], **kwargs):
    import zsfinercam as zf

    kwargs.setdefault("device", "cpu")
    return zf.Localizer.from_classifier(f"timm:{TINY_DINO}", files["classifier"], files["classes"],
                                        pretrained=str(files["weights"]), model_config=str(files["config"]),
                                        **kwargs)


def build_open_clip_siglip(folder: Path, device: str = "cpu"):
    import zsfinercam as zf

    cfg, weights = save_tiny_siglip(folder)
    return zf.Localizer.from_pretrained("tiny-siglip", str(weights), model_config=str(cfg), device=device,
                                        cache_dir=None)


def build_probe_dinov2(folder: Path, device: str = "cpu"):
    return load_tiny_probe(save_tiny_probe(folder), device=device)
