"""CAM bases as objects (`zsfinercam.core.bases`) on the fast path, over the registry.

The registry itself; exact values of the element-wise bases on a hand-set attention pool;
then, for every registered base, equality with pytorch-grad-cam's `FinerCAM(base_method=...)`
(the class the base names as its `reference`; the base alone at alpha 0) for every tiny
backend, at the model's logit scale and at 100, direct and via the cached Jacobian.
The pytorch-grad-cam harness is `zsfinercam.testing.reference.finer_cam`; `reference_model` below
builds the plain model it runs on.
"""
from __future__ import annotations

import copy
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import random_image
from test_backends import built, vocab
from test_engine import MeanPatchBackend
from test_probe import MeanPatchProbe
from tiny_models import TINY_BUILDERS
from test_imports import PACKAGE
from zsfinercam.core.bases import attention, get_base, list_bases, register_base
from zsfinercam.core.bases.registry import unregister_base
from zsfinercam.core.bases.base import CamBase
from zsfinercam.errors import UsageError
from zsfinercam.options import BASES
from zsfinercam.core import engine
from zsfinercam.core.shift import TokenRequest, shifted_attention
from zsfinercam.core.engine import ImageFeatures
from zsfinercam.io.images import to_pixels
from zsfinercam.core.objectives import Objective
from zsfinercam.testing.reference import ImageTower
from zsfinercam.testing.reference import ZeroShotHead, finer_cam


ELEMENT_WISE = [name for name in list_bases() if get_base(name).token_gradients]


# --------------------------------------------------------------------------- the registry
def test_the_registry_lists_the_built_ins_and_options_offer_them():
    assert list_bases() == ["gradcam", "hirescam", "layercam"] == list(BASES)
    assert list_bases("*cam") == list_bases() and list_bases("hi*") == ["hirescam"]
    names = {name: (get_base(name).title, get_base(name).short, get_base(name).token_gradients)
             for name in list_bases()}
    assert names == {"gradcam": ("Grad-CAM", "Grad", False), "hirescam": ("HiResCAM", "HiRes", True),
                     "layercam": ("Layer-CAM", "Layer", True)}


def test_a_duplicate_base_name_is_an_error():
    with pytest.raises(ValueError, match="CAM base 'hirescam' is already registered by .*HiResCAM"):
        @register_base("hirescam")
        class Other(CamBase):
            pass


def test_an_unknown_name_lists_the_bases():
    with pytest.raises(UsageError, match="unknown CAM base 'scorecam'; choose one of: gradcam, hirescam, layercam"):
        get_base("scorecam")


def test_a_new_base_is_one_class_and_serves_the_engine():
    """A base registered outside the package (Grad-CAM's maths under another name) works through
    engine.maps as the built-ins do."""

    class GradCamAgain(CamBase):
        title, short, token_gradients, reference = "Grad-CAM again", "Again", False, "GradCAM"

        def signed(self, gradients, patches):
            return torch.bmm(gradients.float(), patches.transpose(1, 2))

        def maps_triton(self, gradients, patches):
            raise AssertionError("not asked for")

    try:
        register_base("test-again")(GradCamAgain)
        got = engine.maps(HandPool(), hand_features(), HAND_TEXT, [[Objective(0)]], base="test-again")
        want = engine.maps(HandPool(), hand_features(), HAND_TEXT, [[Objective(0)]], base="gradcam")
        for x, y in zip(got, want):
            torch.testing.assert_close(x, y, rtol=0, atol=0)
    finally:
        unregister_base("test-again")


def test_the_registry_lists_names_without_torch():
    code = (
        "import sys, types; sys.modules['torch'] = None\n"  # any `import torch` now fails
        f"pkg = types.ModuleType('zsfinercam'); pkg.__path__ = [{str(PACKAGE)!r}]; sys.modules['zsfinercam'] = pkg\n"
        "from zsfinercam.options import BASES\n"
        "print(BASES)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "('gradcam', 'hirescam', 'layercam')"


# --------------------------------------------------------------------------- hand-set case
class HandPool(MeanPatchBackend):
    """One head over [CLS, A_1, A_2] (D = 2): q = (1, 0) from the query bias, W_k = W_v = I,
    no other biases; e = o, the attention output; a linear head z = e T^T (no normalisation)."""

    name = "test-hand-pool"
    token_gradients = True  # its embed serves shift.TokenRequest through shifted_attention

    def __init__(self):
        super().__init__()
        eye = torch.eye(2)
        self.proj = ((torch.zeros(2, 2), torch.tensor([1.0, 0.0])), (eye, None), (eye, None))

    @property
    def logit_scale(self):
        return None

    def embed(self, stream, target, shift, cache=None):
        return shifted_attention(target[:, :1], target, self.proj, 1, 1.0, shift, 1, cache)[:, :, 0]


LN2 = math.log(2.0)
# scores q . k_t = A_t[0] = (0, 0, ln 2): weights (1/4, 1/4, 1/2), o = (ln 2 / 2, 0)
HAND_A = torch.tensor([[[0.0, 0.0], [0.0, 2.0], [LN2, -1.0]]])
HAND_TEXT = torch.tensor([[1.0, -1.0], [0.0, 1.0]])  # O = z_0: g = dO/do = (1, -1)


def hand_features() -> ImageFeatures:
    e = HAND_A.new_tensor([[LN2 / 2, 0.0]])
    return ImageFeatures(HAND_A, HAND_A, e, (1, 2), 1, [np.zeros((2, 2, 3), np.uint8)], ["hand"], "hand")


# By hand, s_t = w_t (g . v_t - g . o), dO/dA_t = s_t q + w_t g:
#   t = 1: s = (-2 - ln2/2) / 4,  dO/dA = (s + 1/4, -1/4),      A = (0, 2)
#   t = 2: s = (ln2/2 + 1) / 2,   dO/dA = (ln2/4 + 1, -1/2),    A = (ln 2, -1)
HAND_SIGNED = {"hirescam": [-0.5, LN2 + LN2**2 / 4 + 0.5], "layercam": [0.0, LN2 + LN2**2 / 4]}


@pytest.mark.parametrize("use_jacobian", [False, True])
@pytest.mark.parametrize("base", sorted(HAND_SIGNED))
def test_exact_values_on_a_hand_set_attention_pool(base, use_jacobian):
    feats = hand_features()
    gradients = engine.token_gradients(HandPool(), feats, HAND_TEXT, [[Objective(0)]], use_jacobian=use_jacobian)
    signed = get_base(base).signed(gradients, feats.patch_tokens)
    np.testing.assert_allclose(signed[0, 0].numpy(), HAND_SIGNED[base], atol=1e-6)
    raw, norm = engine.maps(HandPool(), hand_features(), HAND_TEXT, [[Objective(0)]], base=base,
                            use_jacobian=use_jacobian)
    np.testing.assert_allclose(raw[0, 0, 0].numpy(), np.maximum(HAND_SIGNED[base], 0), atol=1e-6)
    np.testing.assert_allclose(norm[0, 0, 0].numpy(), [0.0, 1.0], atol=1e-6)


def test_token_gradients_are_the_hand_values_and_sum_to_the_shift_gradient():
    """The closed-form dO/dA per token, and over the patch tokens it adds up to Grad-CAM's dO/dshift."""
    backend, feats = HandPool(), hand_features()
    request = TokenRequest(1)
    with torch.enable_grad():
        z = engine.logits(backend.embed(feats.stream, feats.target, request), HAND_TEXT, None)
        (grad,) = torch.autograd.grad(Objective(0)(z).sum(), request.leaf)
    per_token = attention.input_gradients(request.record, grad)
    s1 = -(2 + LN2 / 2) / 4
    np.testing.assert_allclose(per_token[0, 0].numpy(), [[s1 + 0.25, -0.25], [LN2 / 4 + 1, -0.5]], atol=1e-6)
    weights = engine.channel_weights(backend, feats, HAND_TEXT, [[Objective(0)]])
    torch.testing.assert_close(per_token.sum(dim=2) / 2, weights)


def test_a_backend_without_the_shared_attention_is_refused():
    class Plain(HandPool):
        def embed(self, stream, target, shift, cache=None):
            return target[:, 1:].mean(1, keepdim=True).expand(-1, shift.rows, -1)

    with pytest.raises(ValueError, match="per-token gradients"):
        engine.maps(Plain(), hand_features(), HAND_TEXT, [[Objective(0)]], base="hirescam")


def test_an_unknown_base_is_refused():
    with pytest.raises(ValueError, match="unknown CAM base 'scorecam'"):
        engine.maps(HandPool(), hand_features(), HAND_TEXT, [[Objective(0)]], base="scorecam")


# --------------------------------------------------------------------------- pytorch-grad-cam
class AtScale:
    """A backend seen with another logit scale (the engine reads only embed, logit_scale and chunking)."""

    def __init__(self, backend, scale):
        self.backend, self.logit_scale = backend, scale

    def __getattr__(self, name):
        return getattr(self.backend, name)


def reference_model(loc, text: torch.Tensor, scale: float | None):
    """(pixels -> logits, the target layer): an independent forward of a copy of loc's model."""
    backend, cfg = loc.backend, loc.config
    if backend.name == "probe":
        vit = copy.deepcopy(backend.tower.vit)
        linear = torch.nn.Linear(text.shape[1] - 1, text.shape[0])
        with torch.no_grad():
            linear.weight.copy_(text[:, :-1])
            linear.bias.copy_(text[:, -1])
        return MeanPatchProbe(vit, linear), vit.blocks[-1].norm1
    model = copy.deepcopy(backend.model)
    if backend.name == "hf":
        interpolate = cfg.image_size != cfg.native_image_size
        image = ImageTower(model, lambda m, x: m.get_image_features(pixel_values=x,
                                                                    interpolate_pos_encoding=interpolate))
    else:
        image = ImageTower(model, lambda m, x: m.encode_image(x))
    return ZeroShotHead(image, text, scale), model.get_submodule(cfg.target_layer)


def reference_cam(loc, images, text, objectives, base: str, scale: float | None) -> np.ndarray:
    """pytorch-grad-cam's signed maps (B, M, h, w) on the patch grid, before its ReLU and min-max:
    FinerCAM over `base` for contrastive objectives, the base alone for alpha 0; the targets
    are our objectives (FinerWeightedTarget's 1e-9 would differ at scale 100)."""
    cfg = loc.config
    model, layer = reference_model(loc, text.double(), scale)
    model.double()  # the reference in float64: at scale 100 float32's own noise is ~1e-4 of a map
    pixels = to_pixels(images, cfg.image_size, cfg.mean, cfg.std).double()
    out = []
    for m in range(len(objectives[0])):
        row = [objectives[b][m] for b in range(len(images))]
        out.append(finer_cam(model, layer, pixels, row, grid=cfg.grid_size, prefix=cfg.num_prefix_tokens,
                             base=base, alone=all(o.is_base_alone for o in row), signed=True))
    return np.stack(out, axis=1).astype(np.float64)


def minmax(maps: np.ndarray) -> np.ndarray:
    """ReLU, then min-max over each map's last two axes (a flat map stays zero)."""
    maps = np.maximum(maps, 0) - np.maximum(maps, 0).min(axis=(-2, -1), keepdims=True)
    top = maps.max(axis=(-2, -1), keepdims=True)
    return maps / np.where(top > 0, top, 1)


def objectives_for(alpha: float, batch: int) -> list[list[Objective]]:
    row = [Objective(0, (1, 2, 3), alpha), Objective(4, (0, 5), alpha), Objective(2, (1,), alpha, "compare"),
           Objective(5, (0, 1, 3), 0.6 * alpha, "mean")]
    return [row] * batch


@pytest.fixture(params=sorted(TINY_BUILDERS))
def label(request):
    return request.param


@pytest.mark.parametrize("base", list_bases())
@pytest.mark.parametrize("alpha, at_100", [(1.0, False), (0.0, False), (1.0, True), (0.0, True)])
def test_maps_equal_pytorch_grad_cam(label, tmp_path_factory, base, alpha, at_100):
    loc = built(label, tmp_path_factory)
    images = [random_image(1), random_image(2, 33, 29)]
    feats = loc.encode_image(images)
    text, scale = loc.head(vocab(loc)), loc.backend.logit_scale
    backend = loc.backend
    if at_100 and scale is None:  # a linear probe: logits ten times larger instead
        text = 10 * text
    elif at_100:
        backend, scale = AtScale(loc.backend, 100.0), 100.0
    objs = objectives_for(alpha, len(images))
    signed = reference_cam(loc, images, text, objs, base, scale)
    top = np.abs(signed).max(axis=(2, 3), keepdims=True)
    worst = 0.0
    for use_jacobian in (False, True):
        raw, norm = engine.maps(backend, feats, text, objs, base=base, use_jacobian=use_jacobian)
        assert raw.shape == norm.shape == (2, len(objs[0]), *loc.config.grid_size)
        assert (norm.amax(dim=(2, 3)) == 1).all(), "a map is flat: the test would not see a difference"
        np.testing.assert_allclose(norm.numpy(), minmax(signed), atol=1e-4)
        np.testing.assert_allclose(raw.numpy() / top, np.maximum(signed, 0) / top, atol=1e-4)
        worst = max(worst, float(np.abs(norm.numpy() - minmax(signed)).max()))
    print(f"{label} {base} alpha={alpha} scale={scale}: max abs diff {worst:.2e}, largest |map| "
          f"{float(top.min()):.1e}..{float(top.max()):.1e}")


@pytest.mark.parametrize("base", list_bases())
def test_alpha_zero_is_the_base_alone(label, tmp_path_factory, base):
    loc = built(label, tmp_path_factory)
    feats = loc.encode_image(random_image(3))
    text = loc.head(vocab(loc))
    finer = engine.maps(loc.backend, feats, text, [[Objective(1, (0, 2), 0.0)]], base=base)
    alone = engine.maps(loc.backend, feats, text, [[Objective(1)]], base=base)
    for x, y in zip(finer, alone):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
    contrast = engine.maps(loc.backend, feats, text, [[Objective(1, (0, 2), 1.0)]], base=base)
    assert not torch.allclose(contrast[1], alone[1], atol=1e-3)


@pytest.mark.parametrize("base", ELEMENT_WISE)
def test_cached_features_keep_the_output_jacobian_per_image(label, tmp_path_factory, base):
    loc = built(label, tmp_path_factory)
    feats = loc.encode_image([random_image(4), random_image(5, 30, 20)])
    text = loc.head(vocab(loc))
    objs = objectives_for(1.0, 2)
    direct = engine.maps(loc.backend, feats, text, objs, base=base)[0]
    cached = engine.maps(loc.backend, feats, text, objs, base=base, use_jacobian=True)[0]
    torch.testing.assert_close(cached, direct, rtol=1e-4, atol=1e-5 * float(direct.max()))
    if engine._reaches_attention(loc.backend, feats):
        assert feats.output_jacobian is not None
        one = engine.maps(loc.backend, feats[1], text, objs[:1], base=base, use_jacobian=True)[0]
        torch.testing.assert_close(one[0], cached[1], rtol=1e-5, atol=1e-6 * float(direct.max()))
    else:  # the full path has no attention shortcut: cached features take the direct path
        assert feats.output_jacobian is None


def test_cached_features_reuse_the_jacobian_their_base_needs(tiny, monkeypatch):
    """On a tower whose Jacobian is costly, cached features take the Jacobian path only when
    the one their base reads exists: `jacobian` for Grad-CAM, `output_jacobian` for the others."""
    monkeypatch.setattr(type(tiny.backend), "jacobian_chunk", 4)  # a class property here
    image = random_image(6)
    feats = tiny.encode_image(image)
    use = {base: tiny._use_jacobian(feats, feats, base) for base in list_bases()}
    assert use == dict.fromkeys(list_bases(), False)
    engine.maps(tiny.backend, feats, tiny.head(["a", "b"]), [[Objective(0, (1,))]], base="hirescam",
                use_jacobian=True)
    assert feats.output_jacobian is not None and feats.jacobian is None
    assert tiny._use_jacobian(feats, feats, "hirescam") and tiny._use_jacobian(feats, feats, "layercam")
    assert not tiny._use_jacobian(feats, feats, "gradcam") and not tiny._use_jacobian(image, feats, "hirescam")
