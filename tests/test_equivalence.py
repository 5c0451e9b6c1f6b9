"""Our maps against an independent reference: pytorch-grad-cam's FinerCAM on the same model and head."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from conftest import random_image
from zsfinercam.testing.reference import ImageTower, ZeroShotHead, finer_cam
from zsfinercam.io.render import minmax

CLASSES = ["cat", "dog", "bird", "red fox", "grey wolf", "barn owl"]


def reference_model(loc):
    """A copy of the open_clip model whose position embedding is resampled to the run size."""
    clip = copy.deepcopy(loc.backend.model)
    clip.visual.positional_embedding = torch.nn.Parameter(loc.backend.tower.pos_embed().detach().clone())
    return clip


def reference_maps(loc, images, targets_and_refs, alpha):
    clip = reference_model(loc)
    text = loc.encode_text(CLASSES)
    model = ZeroShotHead(ImageTower(clip, lambda m, x: m.encode_image(x)), text, loc.backend.logit_scale)
    pixels = loc.pixels(images)
    # alpha 0: FinerCAM's own choice of references (they cancel out)
    targets = targets_and_refs[0][0] if alpha == 0 else targets_and_refs
    maps = finer_cam(model, clip.visual.transformer.resblocks[-1].ln_1, pixels, targets,
                     grid=loc.config.grid_size, prefix=1, alpha=alpha)
    return maps, model(pixels).detach()


@pytest.mark.parametrize("image_size", [None, 48])
@pytest.mark.parametrize("alpha", [1.0, 0.0])
def test_token_maps_equal_pytorch_grad_cam(tiny_files, alpha, image_size):
    import zsfinercam as zf

    cfg, weights = tiny_files
    loc = zf.Localizer.from_pretrained("tiny", str(weights), model_config=str(cfg), device="cpu",
                                       image_size=image_size, cache_dir=None)
    images = [random_image(1), random_image(2, 33, 29)]
    ours = loc.locate_many(images, CLASSES[:3], vocab=CLASSES, alpha=alpha, base="gradcam")
    for target in range(3):
        pairs = [(target, [CLASSES.index(r) for r in ours[b][target].references]) for b in range(2)]
        ref, logits = reference_maps(loc, images, pairs, alpha)
        for b in range(2):
            got = minmax(ours[b][target].token_map)
            assert got.shape == loc.config.grid_size
            np.testing.assert_allclose(got, ref[b], atol=1e-4)
            np.testing.assert_allclose(ours[b][target].scores[CLASSES[target]], logits[b, target], atol=1e-5)


def test_automatic_references_follow_the_papers_rule(tiny):
    """FinerCAM's own selection (ranks 1..3 by |z - z_t|) picks the references we pick."""
    image = random_image(3)
    ours = tiny.locate_many(image, CLASSES, vocab=CLASSES, base="gradcam")
    z = np.array([ours[0].scores[c] for c in CLASSES])
    for res in ours:
        t = CLASSES.index(res.concept)
        order = [i for i in np.argsort(np.abs(z - z[t]), kind="stable") if i != t][:3]
        assert [CLASSES[i] for i in order] == list(res.references)
        ref, _ = reference_maps(tiny, [image], [(t, order)], 1.0)
        np.testing.assert_allclose(minmax(res.token_map), ref[0], atol=1e-4)
