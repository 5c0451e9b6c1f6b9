"""Tiny models built from configs, saved and re-loaded through the real loader."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

TINY_CFG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 2, "head_width": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1},
}


def save_tiny(folder, seed: int = 0, cfg: dict | None = None, logit_scale: float | None = None):
    """A random open_clip CLIP from `cfg`, saved as config.json + weights.safetensors in `folder`."""
    import open_clip
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    cfg = cfg or TINY_CFG
    model = open_clip.CLIP(**cfg)
    if logit_scale is not None:
        model.logit_scale.data.fill_(float(np.log(logit_scale)))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(cfg))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "weights.safetensors"))
    return folder / "config.json", folder / "weights.safetensors"


@pytest.fixture(scope="session")
def tiny_files(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def tiny(tiny_files):
    import zsfinercam as zf

    cfg, weights = tiny_files
    return zf.Localizer.from_pretrained("tiny", str(weights), model_config=str(cfg), device="cpu", cache_dir=None)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """No test writes to the user's cache, reaches a hub, or reads the user's default model."""
    monkeypatch.setenv("ZSFINERCAM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    for name in ("ZSFINERCAM_MODEL", "ZSFINERCAM_PRETRAINED", "ZSFINERCAM_BACKEND"):
        monkeypatch.delenv(name, raising=False)


def random_image(seed: int, h: int = 40, w: int = 52) -> np.ndarray:
    return (np.random.RandomState(seed).rand(h, w, 3) * 255).astype(np.uint8)
