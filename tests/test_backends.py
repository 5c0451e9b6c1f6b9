"""One suite for every backend (timm tests/test_models.py style), over tiny_models.TINY_BUILDERS.

A backend registered without a builder fails `test_every_backend_has_a_tiny_model`.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import zsfinercam as zf
from conftest import random_image
from tiny_models import TINY_BUILDERS
from zsfinercam import engine
from zsfinercam.objectives import Objective

TEXT_VOCAB = ["cat", "dog", "bird", "red fox", "grey wolf", "barn owl"]
_BUILT: dict[str, zf.Localizer] = {}


def built(label: str, tmp_path_factory) -> zf.Localizer:
    """Each tiny model is built (saved and loaded) once per session."""
    if label not in _BUILT:
        _BUILT[label] = TINY_BUILDERS[label](tmp_path_factory.mktemp(label.replace("/", "_")))
    return _BUILT[label]


@pytest.fixture(params=sorted(TINY_BUILDERS))
def loc(request, tmp_path_factory):
    return built(request.param, tmp_path_factory)


def fixed_classes(loc) -> bool:
    """A trained linear probe scores only its own classes; text heads take any prompt."""
    return not getattr(loc.config, "normalize", True)


def vocab(loc) -> list[str]:
    """Six names the model can score: a probe's own classes, else free text."""
    return list(loc.config.default_vocab)[:6] if fixed_classes(loc) else TEXT_VOCAB


def concepts(loc) -> list[str]:
    return vocab(loc)[:3]


def _modules(loc) -> list[torch.nn.Module]:
    """Every nn.Module the backend holds, directly or one object deeper (a probe's tower)."""
    held = list(vars(loc.backend).values())
    held += [v for obj in held if not isinstance(obj, torch.nn.Module) and hasattr(obj, "__dict__")
             for v in vars(obj).values()]
    tops = list({id(v): v for v in held if isinstance(v, torch.nn.Module)}.values())
    return list({id(m): m for top in tops for m in top.modules()}.values())


def test_every_backend_has_a_tiny_model(tmp_path_factory):
    covered = {built(label, tmp_path_factory).backend.name for label in TINY_BUILDERS}
    missing = set(zf.list_backends()) - covered
    assert not missing, f"add a builder to tests/tiny_models.py::TINY_BUILDERS for backend(s) {sorted(missing)}"


def test_locate_many_shapes_and_finite_maps(loc):
    image = random_image(0, 40, 52)
    results = loc.locate_many(image, concepts(loc), vocab=vocab(loc))
    assert [r.concept for r in results] == concepts(loc)
    for r in results:
        assert r.token_map.shape == loc.config.grid_size and r.token_map.dtype == np.float32
        assert r.heatmap.shape == (40, 52)
        assert np.isfinite(r.token_map).all() and np.isfinite(r.heatmap).all()
        assert r.token_map.min() >= 0 and r.token_map.max() > 0
        assert len(r.references) == 3 and r.concept not in r.references
        assert all(np.isfinite(v) for v in r.scores.values())


def test_direct_path_equals_jacobian_path(loc):
    feats = loc.encode_image([random_image(4), random_image(5, 30, 20)])
    text = loc.head(vocab(loc))
    objs = [[Objective(0, (1, 2)), Objective(3, (0,), 0.5, "compare"), Objective(2, (0, 1, 3), 0.6, "mean"),
             Objective(1, ())]] * 2
    direct = engine.channel_weights(loc.backend, feats, text, objs)
    via_g = engine.channel_weights(loc.backend, feats, text, objs, use_jacobian=True)
    assert ((via_g - direct).norm(dim=-1) / direct.norm(dim=-1)).max() < 1e-5
    a = loc.locate_many(random_image(4), concepts(loc), vocab=vocab(loc))
    b = loc.locate_many(loc.encode_image(random_image(4)), concepts(loc), vocab=vocab(loc))
    for x, y in zip(a, b):
        np.testing.assert_allclose(y.token_map, x.token_map, rtol=1e-5, atol=1e-5 * x.token_map.max())


def test_a_batch_equals_images_one_by_one(loc):
    images = [random_image(1), random_image(2, 33, 29)]
    batch = loc.locate_many(images, concepts(loc), vocab=vocab(loc))
    for image, together in zip(images, batch):
        alone = loc.locate_many(image, concepts(loc), vocab=vocab(loc))
        for x, y in zip(alone, together):
            assert x.references == y.references
            np.testing.assert_allclose(y.token_map, x.token_map, rtol=1e-5, atol=1e-5 * x.token_map.max())
            np.testing.assert_allclose(list(y.scores.values()), list(x.scores.values()), rtol=1e-5, atol=1e-5)


def test_alpha_zero_is_grad_cam(loc):
    image = random_image(3)
    finer = loc.locate_many(image, concepts(loc), vocab=vocab(loc), alpha=0.0)
    plain = loc.locate_many(image, concepts(loc), method="gradcam")
    for x, y in zip(finer, plain):
        np.testing.assert_allclose(x.token_map, y.token_map, rtol=1e-6, atol=1e-9)


def test_text_cache_hit_returns_identical_tensors(loc, monkeypatch):
    if fixed_classes(loc):
        pytest.skip("a linear probe has no text tower")
    first = loc.encode_text(["a red-tailed hawk", "cat"])
    monkeypatch.setattr(loc.backend, "encode_text", lambda tokens: pytest.fail("the text tower was run again"))
    second = loc.encode_text(["cat", "a red-tailed hawk"])
    assert torch.equal(second, first.flip(0))


def test_maps_change_with_the_concept(loc):
    names = vocab(loc)
    maps = [r.token_map for r in loc.locate_many(random_image(6), names, method="gradcam")]
    for i in range(len(maps)):
        for j in range(i):
            assert not np.allclose(maps[i], maps[j], rtol=1e-4, atol=1e-7), (names[i], names[j])


def test_no_grad_state_or_hooks_leak(loc):
    modules = _modules(loc)
    assert modules, "the backend holds no nn.Module to check"
    before = [p.requires_grad for m in modules for p in m.parameters(recurse=False)]
    grad_mode = torch.is_grad_enabled()
    loc.locate_many(loc.encode_image(random_image(9)), concepts(loc), vocab=vocab(loc))
    loc.locate_many(random_image(9), concepts(loc), vocab=vocab(loc))
    assert torch.is_grad_enabled() == grad_mode
    assert [p.requires_grad for m in modules for p in m.parameters(recurse=False)] == before
    assert all(p.grad is None for m in modules for p in m.parameters(recurse=False))
    for m in modules:
        hooks = (m._forward_hooks, m._forward_pre_hooks, m._backward_hooks, getattr(m, "_backward_pre_hooks", {}))
        assert not any(hooks), f"hook left on {type(m).__name__}"
