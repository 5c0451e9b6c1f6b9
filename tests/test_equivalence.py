"""Our maps against an independent reference: pytorch-grad-cam's FinerCAM on the same model and head."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pytorch_grad_cam import FinerCAM, GradCAM
from pytorch_grad_cam.utils.model_targets import FinerWeightedTarget

from conftest import random_image
from zsfinercam.images import to_pixels

CLASSES = ["cat", "dog", "bird", "red fox", "grey wolf", "barn owl"]


class ZeroShotHead(torch.nn.Module):
    """image -> logits = s * normalize(encode_image(x)) @ T^T, the plain way."""

    def __init__(self, clip, text, scale):
        super().__init__()
        self.clip, self.text, self.scale = clip, text, scale

    def forward(self, x):
        return self.scale * F.normalize(self.clip.encode_image(x), dim=-1) @ self.text.T


class GridGradCAM(GradCAM):
    """Leaves the cam on the patch grid (no resize), so token maps can be compared directly."""

    def get_target_width_height(self, input_tensor):
        return self.grid[1], self.grid[0]


def reference_model(loc):
    """A copy of the open_clip model whose position embedding is resampled to the run size."""
    clip = copy.deepcopy(loc.backend.model)
    clip.visual.positional_embedding = torch.nn.Parameter(loc.backend.tower.pos_embed().detach().clone())
    return clip


def reference_maps(loc, images, targets_and_refs, alpha):
    clip = reference_model(loc)
    text = loc.encode_text(CLASSES)
    model = ZeroShotHead(clip, text, loc.backend.logit_scale)
    grid = loc.config.grid_size

    def tokens_to_grid(t):
        return t[:, 1:].reshape(t.shape[0], grid[0], grid[1], t.shape[-1]).permute(0, 3, 1, 2)

    GridGradCAM.grid = grid
    cam = FinerCAM(model, [clip.visual.transformer.resblocks[-1].ln_1], tokens_to_grid, base_method=GridGradCAM)
    pixels = to_pixels(images, loc.config.image_size, loc.config.mean, loc.config.std)
    if alpha == 0:  # FinerCAM's own choice of references; with alpha 0 they cancel out
        with cam:
            return cam(pixels, target_idx=targets_and_refs[0][0], alpha=0.0), model(pixels).detach()
    targets = [FinerWeightedTarget(t, list(refs), alpha) for t, refs in targets_and_refs]
    with cam:
        return cam(pixels, targets=targets, alpha=alpha), model(pixels).detach()


def minmax(x):
    x = x - x.min()
    return x / x.max() if x.max() > 0 else x


@pytest.mark.parametrize("image_size", [None, 48])
@pytest.mark.parametrize("alpha", [1.0, 0.0])
def test_token_maps_equal_pytorch_grad_cam(tiny_files, alpha, image_size):
    import zsfinercam as zf

    cfg, weights = tiny_files
    loc = zf.Localizer.from_pretrained("tiny", str(weights), model_config=str(cfg), device="cpu",
                                       image_size=image_size, cache_dir=None)
    images = [random_image(1), random_image(2, 33, 29)]
    ours = loc.locate_many(images, CLASSES[:3], vocab=CLASSES, alpha=alpha)
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
    ours = tiny.locate_many(image, CLASSES, vocab=CLASSES)
    z = np.array([ours[0].scores[c] for c in CLASSES])
    for res in ours:
        t = CLASSES.index(res.concept)
        order = [i for i in np.argsort(np.abs(z - z[t]), kind="stable") if i != t][:3]
        assert [CLASSES[i] for i in order] == list(res.references)
        ref, _ = reference_maps(tiny, [image], [(t, order)], 1.0)
        np.testing.assert_allclose(minmax(res.token_map), ref[0], atol=1e-4)
