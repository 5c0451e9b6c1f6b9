"""open_clip towers with a timm trunk (SigLIP MAP pooling, class token, register tokens) against
pytorch-grad-cam's FinerCAM on the same model and text head."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import zsfinercam as zf
from conftest import random_image
from tiny_timm import save_tiny_siglip, siglip_cfg
from zsfinercam.core import engine
from zsfinercam.testing.reference import ImageTower, ZeroShotHead, finer_cam
from zsfinercam.io.render import minmax

CONCEPTS = ["cat", "dog", "bird", "red fox", "grey wolf", "barn owl"]
VARIANTS = {
    "siglip": siglip_cfg(),  # no prefix token, MAP over patch tokens only, 4x6 grid
    "map-register": dict(siglip_cfg("test_vit3", embed_dim=96), vision_cfg={  # 1 register token, inside the pool
        "image_size": 160, "timm_model_name": "test_vit3", "timm_pool": "map", "timm_proj": "none"}),
    "token-proj": dict(siglip_cfg("test_vit", embed_dim=24), vision_cfg={  # CLS pooling + open_clip projection
        "image_size": 160, "timm_model_name": "test_vit", "timm_pool": "token", "timm_proj": "linear"}),
}


SMALL = {"map-register": 48, "token-proj": 48}  # run the 160-pixel test towers on a 3x3 grid: fast


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return {k: save_tiny_siglip(tmp_path_factory.mktemp(k), cfg) for k, cfg in VARIANTS.items()}


def load(files, variant="siglip", **kwargs) -> zf.Localizer:
    cfg, weights = files[variant]
    kwargs.setdefault("image_size", SMALL.get(variant))
    return zf.Localizer.from_pretrained(f"tiny-{variant}", str(weights), model_config=str(cfg), device="cpu",
                                        cache_dir=None, **kwargs)


def reference(loc, images, pairs):
    """pytorch-grad-cam FinerCAM maps on a copy of the model (position embedding set to the run size)."""
    clip = copy.deepcopy(loc.backend.model)
    trunk = clip.visual.trunk
    if loc.config.image_size != loc.config.native_image_size:
        trunk.set_input_size(img_size=loc.config.image_size)
    layer = trunk.norm if loc.config.pooling == "map" else trunk.blocks[-1].norm1
    model = ZeroShotHead(ImageTower(clip, lambda m, x: m.encode_image(x)), loc.encode_text(CONCEPTS),
                         loc.backend.logit_scale)
    pixels = loc.pixels(images)
    maps = finer_cam(model, layer, pixels, pairs, grid=loc.config.grid_size, prefix=loc.config.num_prefix_tokens)
    return maps, model(pixels).detach()


@pytest.mark.parametrize("variant, image_size", [("siglip", None), ("siglip", 40), ("map-register", 48),
                                                 ("token-proj", 48)])
def test_maps_equal_pytorch_grad_cam(files, variant, image_size):
    loc = load(files, variant, image_size=image_size)
    images = [random_image(1), random_image(2, 33, 29)]
    ours = loc.locate_many(images, CONCEPTS[:2], vocab=CONCEPTS, base="gradcam")
    worst = 0.0
    for m in range(2):
        pairs = [(m, [CONCEPTS.index(r) for r in ours[b][m].references]) for b in range(2)]
        ref, logits = reference(loc, images, pairs)
        for b in range(2):
            got = minmax(ours[b][m].token_map)
            assert got.shape == loc.config.grid_size
            assert np.ptp(ref[b]) > 0.5  # a real map, not a flat one
            np.testing.assert_allclose(got, ref[b], atol=1e-4)
            np.testing.assert_allclose(ours[b][m].scores[CONCEPTS[m]], logits[b, m] + loc.config.logit_bias, atol=1e-4)
            worst = max(worst, float(np.abs(got - ref[b]).max()))
    print(f"{variant} image_size={image_size}: max |ours - grad-cam| = {worst:.2e}")


def test_siglip_card(files):
    loc = load(files)
    cfg = loc.config
    assert (cfg.backend, cfg.pooling, cfg.num_prefix_tokens) == ("open_clip", "map", 0)
    assert cfg.grid_size == (4, 6) and cfg.target_layer == "visual.trunk.norm"
    assert cfg.logit_bias == pytest.approx(-10.0) and cfg.logit_scale == pytest.approx(10.0)
    register = load(files, "map-register").config
    assert register.num_prefix_tokens == 1 and register.pooling == "map"
    token = load(files, "token-proj").config
    assert token.pooling == "cls" and token.target_layer == "visual.trunk.blocks.5.norm1"


def test_siglip_scores_are_the_models_logits(files):
    loc = load(files)
    image = random_image(4)
    z = loc.scores(image, CONCEPTS[:3])[0]
    pixels = loc.pixels([image])
    with torch.no_grad():
        e = F.normalize(loc.backend.model.encode_image(pixels), dim=-1)
    want = loc.backend.logit_scale * e @ loc.encode_text(CONCEPTS[:3]).T + loc.backend.model.logit_bias.detach()
    np.testing.assert_allclose([z[c] for c in CONCEPTS[:3]], want[0].numpy(), atol=1e-5)


def test_different_concepts_give_different_maps(files):
    loc = load(files)
    a, b = loc.locate_many(random_image(5), CONCEPTS[:2], vocab=CONCEPTS)
    assert np.abs(a.token_map / a.token_map.max() - b.token_map / b.token_map.max()).max() > 0.1


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_fast_path_equals_full_path(files, variant):
    loc = load(files, variant)
    tower = loc.backend.tower
    feats = loc.encode_image([random_image(6), random_image(7)])
    shift = torch.randn(2, 3, feats.target.shape[-1]) * 0.3
    fast = tower.embed(feats.stream, feats.target, shift, {})
    tower.fast = None
    try:
        full = tower.embed(feats.stream, feats.target, shift, {})
    finally:
        tower.fast = "token" if variant == "token-proj" else "map"
    torch.testing.assert_close(fast, full, atol=1e-5, rtol=1e-5)


def test_jacobian_path_equals_direct_path(files):
    loc = load(files)
    feats = loc.encode_image(random_image(8))
    direct = loc.locate_many(random_image(8), CONCEPTS[:3], vocab=CONCEPTS, base="gradcam")
    cached = loc.locate_many(feats, CONCEPTS[:3], vocab=CONCEPTS, base="gradcam")  # the Grad-CAM Jacobian
    assert feats.jacobian is not None
    for d, c in zip(direct, cached):
        np.testing.assert_allclose(minmax(c.token_map), minmax(d.token_map), atol=1e-4)


def test_embedding_matches_open_clip(files):
    loc = load(files, "map-register", image_size=None)  # the model's own size: encode_image runs as is
    image = random_image(9)
    pixels = loc.pixels([image])
    with torch.no_grad():
        want = loc.backend.model.encode_image(pixels)
    torch.testing.assert_close(engine.encode(loc.backend, pixels)[2], want, atol=1e-5, rtol=1e-5)


def test_unsupported_towers_are_clear(files, tmp_path):
    with pytest.raises(zf.UsageError, match="multiple of the patch size 8"):
        load(files, image_size=36)
    cfg, weights = save_tiny_siglip(tmp_path, siglip_cfg(pool=""))
    with pytest.raises(zf.UsageError, match="does not pool"):
        zf.Localizer.from_pretrained("nopool", str(weights), model_config=str(cfg), device="cpu", cache_dir=None)


@pytest.mark.parametrize("kind", ["open_clip", "open_clip_timm", "hf"])
def test_a_half_precision_model_is_refused_by_from_model(files, tiny, tmp_path, kind):
    """bf16/fp16 weights would meet the float32 stream (mixed dtype): one line naming model.float()."""
    from zsfinercam.backends.hf import HFBackend
    from zsfinercam.backends.open_clip import OpenClipBackend

    if kind == "hf":
        import transformers
        from tiny_models import save_tiny_hf

        folder = save_tiny_hf(tmp_path / "hf", "clip")
        model = transformers.CLIPModel.from_pretrained(str(folder)).to(torch.bfloat16)
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder))
        wrap = HFBackend.from_model
    else:
        held = (tiny if kind == "open_clip" else load(files)).backend
        model, tokenizer = copy.deepcopy(held.model).to(torch.bfloat16), held.tokenizer
        wrap = OpenClipBackend.from_model
    with pytest.raises(zf.UsageError, match=r"weights are torch.bfloat16; .*pass model.float\(\)") as err:
        wrap(model, tokenizer)
    assert "\n" not in str(err.value) and next(model.parameters()).dtype == torch.bfloat16  # left as it was
    loc = zf.Localizer(wrap(model.float(), tokenizer), cache_dir=None)
    assert loc.locate(random_image(1), "cat", vs=["dog"]).token_map.size
