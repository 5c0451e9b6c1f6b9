"""The fast path's maths: exact maps on a hand-set model, both weight paths, soundness at scale 100."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import random_image, save_tiny
from zsfinercam.core import engine
from zsfinercam.backends.base import Backend
from zsfinercam.config import ModelConfig
from zsfinercam.core.engine import ImageFeatures
from zsfinercam.core.objectives import Objective


class MeanPatchBackend(Backend):
    """e = mean over patch tokens of (A_n + shift): dO/dA_n = u / N by hand."""

    name = "test-mean-patch"

    def __init__(self, scale: float = 1.0):
        self.config = ModelConfig("hand", self.name, None, (2, 2), (2, 2), (1, 1), 1, 2, 2, scale,
                                  (0, 0, 0), (1, 1, 1), "identity", "mean", 8)
        self.device = torch.device("cpu")

    def from_pretrained(cls, *a, **k):  # pragma: no cover - not loadable
        raise NotImplementedError

    def tokenize(self, texts):  # pragma: no cover
        raise NotImplementedError

    def encode_text(self, tokens):  # pragma: no cover
        raise NotImplementedError

    def trunk(self, pixels):  # pragma: no cover
        raise NotImplementedError

    def target(self, stream):
        return stream

    def embed(self, stream, target, shift, cache=None):
        return target[:, 1:].mean(dim=1, keepdim=True) + shift


# Patch tokens with mean (1, 0): the embedding is (1, 0), unit length.
A = torch.tensor([[[9.0, 9.0], [1.0, 2.0], [1.0, -1.0], [1.0, -4.0], [1.0, 3.0]]])
TEXT = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # concept 0 along e, concept 1 orthogonal


def hand_features():
    return ImageFeatures(A, A, A[:, 1:].mean(1), (2, 2), 1, [np.zeros((2, 2, 3), np.uint8)], ["hand"], "hand")


@pytest.mark.parametrize("use_jacobian", [False, True])
@pytest.mark.parametrize("objective, expected", [
    # Grad-CAM on concept 1: dO/de_n = (0, 1), projected by (I - e e^T) -> (0, 1); w = (0, 1) / 4
    (Objective(1, ()), [[0.5, 0.0], [0.0, 0.75]]),
    # Finer-CAM concept 0 vs 1: dO/de_n = (1, -1) -> projected (0, -1); w = (0, -1) / 4
    (Objective(0, (1,), 1.0), [[0.0, 0.25], [1.0, 0.0]]),
    # Grad-CAM on concept 0: the embedding is already along it, so every weight is zero
    (Objective(0, ()), [[0.0, 0.0], [0.0, 0.0]]),
])
def test_exact_maps_on_a_hand_set_model(objective, expected, use_jacobian):
    backend, feats = MeanPatchBackend(), hand_features()
    w = engine.channel_weights(backend, feats, TEXT, [[objective]], use_jacobian=use_jacobian)
    raw, norm = engine.token_maps(feats, w, impl="torch")
    np.testing.assert_allclose(raw[0, 0].numpy(), expected, atol=1e-6)
    top = max(max(r) for r in expected)
    np.testing.assert_allclose(norm[0, 0].numpy(), np.array(expected) / top if top else expected, atol=1e-6)


def test_direct_and_jacobian_paths_agree_on_a_vit(tiny):
    feats = tiny.encode_image([random_image(4), random_image(5)])
    text = tiny.encode_text(["a", "b", "c", "d"])
    objs = [[Objective(0, (1, 2)), Objective(3, (0,), 0.5, "compare"), Objective(2, (0, 1, 3), 0.6, "mean")]] * 2
    direct = engine.channel_weights(tiny.backend, feats, text, objs)
    via_g = engine.channel_weights(tiny.backend, feats, text, objs, use_jacobian=True)
    torch.testing.assert_close(via_g, direct, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("image_size", [None, 48])
def test_embedding_equals_open_clip_encode_image(tiny_files, image_size):
    import copy

    import zsfinercam as zf

    cfg, weights = tiny_files
    loc = zf.Localizer.from_pretrained("t", str(weights), model_config=str(cfg), device="cpu",
                                       image_size=image_size, cache_dir=None)
    feats = loc.encode_image([random_image(6), random_image(7)])
    clip = copy.deepcopy(loc.backend.model)
    clip.visual.positional_embedding = torch.nn.Parameter(loc.backend.tower.pos_embed().detach())
    pixels = loc.pixels(feats.images)
    with torch.no_grad():
        torch.testing.assert_close(feats.embedding, clip.encode_image(pixels), atol=1e-5, rtol=1e-5)


def crafted_text(e_n: torch.Tensor, cosines: list[float], seed: int = 0) -> torch.Tensor:
    """Unit text embeddings with the given cosines to the image embedding."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for c in cosines:
        r = torch.randn(e_n.shape[-1], generator=g)
        r = F.normalize(r - (r @ e_n) * e_n, dim=0)
        rows.append(c * e_n + (1 - c * c) ** 0.5 * r)
    return torch.stack(rows)


def test_weighted_map_at_scale_100_is_the_top_reference_limit(tmp_path):
    import zsfinercam as zf

    cfg, weights = save_tiny(tmp_path, seed=3, logit_scale=100.0)
    loc = zf.Localizer.from_pretrained("t", str(weights), model_config=str(cfg), device="cpu", cache_dir=None)
    assert loc.backend.logit_scale == pytest.approx(100.0, rel=1e-5)
    feats = loc.encode_image(random_image(8))
    text = crafted_text(F.normalize(feats.embedding[0], dim=0), [0.6, 0.3, 0.1, 0.0])
    weighted = engine.channel_weights(loc.backend, feats, text, [[Objective(0, (1, 2, 3))]])
    limit = engine.channel_weights(loc.backend, feats, text, [[Objective(0, (1,), 1.0, "compare")]])
    assert torch.isfinite(weighted).all()
    _, got = engine.token_maps(feats, weighted, impl="torch")
    _, want = engine.token_maps(feats, limit, impl="torch")
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)


def test_the_official_epsilon_form_misses_the_limit_at_scale_100(tmp_path):
    """The same setting through pytorch-grad-cam's FinerWeightedTarget (1e-9 epsilon): a different map."""
    from pytorch_grad_cam.utils.model_targets import FinerWeightedTarget

    import zsfinercam as zf
    cfg, weights = save_tiny(tmp_path, seed=3, logit_scale=100.0)
    loc = zf.Localizer.from_pretrained("t", str(weights), model_config=str(cfg), device="cpu", cache_dir=None)
    feats = loc.encode_image(random_image(8))
    text = crafted_text(F.normalize(feats.embedding[0], dim=0), [0.6, 0.3, 0.1, 0.0])
    limit = engine.channel_weights(loc.backend, feats, text, [[Objective(0, (1,), 1.0, "compare")]])
    _, want = engine.token_maps(feats, limit, impl="torch")

    clip = loc.backend.model
    pixels = loc.pixels(feats.images)
    stash = {}
    handle = clip.visual.transformer.resblocks[-1].ln_1.register_forward_hook(
        lambda mod, inp, out: stash.update(a=out.retain_grad() or out))
    try:
        z = 100.0 * F.normalize(clip.encode_image(pixels), dim=-1) @ text.T
        FinerWeightedTarget(0, [1, 2, 3], 1.0)(z[0]).backward()
    finally:
        handle.remove()
        clip.zero_grad(set_to_none=True)
    a = stash["a"]
    w = a.grad[:, 1:].mean(1, keepdim=True)
    _, official = engine.token_maps(feats, w.detach(), impl="torch")
    assert (official - want).abs().max() > 0.1


def test_features_of_several_images_give_one_result_list_per_image(tiny):
    images = [random_image(9), random_image(10)]
    direct = tiny.locate_many(images, ["cat", "dog", "owl"])
    cached = tiny.locate_many(tiny.encode_image(images), ["cat", "dog", "owl"])
    assert [len(row) for row in cached] == [3, 3]
    for row_a, row_b in zip(direct, cached):
        for a, b in zip(row_a, row_b):
            assert a.references == b.references
            np.testing.assert_allclose(a.token_map, b.token_map, rtol=1e-4, atol=1e-5 * a.token_map.max())


def test_text_embeddings_do_not_depend_on_batching(tiny, monkeypatch):
    """Prompts are sorted by length and cut per batch: the result must not depend on the batches."""
    import zsfinercam.concepts.text as text_module

    concepts = ["a cat", "a very long and winding description of a small dog", "owl", "x"]
    templates = ["a photo of {}.", "{}"]
    tiny.text._memory.clear()
    together = tiny.encode_text(concepts, templates)
    tiny.text._memory.clear()
    monkeypatch.setattr(text_module, "TEXT_BATCH", 3)
    mixed = tiny.encode_text(concepts, templates)
    with torch.no_grad():
        tokens = tiny.backend.tokenize([t.replace("{}", c) for c in concepts for t in templates])
        full = F.normalize(F.normalize(tiny.backend.model.encode_text(tokens), dim=-1).view(4, 2, -1).mean(1), dim=-1)
    torch.testing.assert_close(together, full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mixed, full, atol=1e-5, rtol=1e-5)
    tiny.text._memory.clear()
