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
from zsfinercam.core import engine
from zsfinercam.backends.base import Backend
from zsfinercam.config import ModelConfig
from zsfinercam.core.objectives import Objective
from test_faithfulness import by_hand, expected, pixels_of
from zsfinercam.core import faithfulness as faith
from zsfinercam.core import removal

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
    a = loc.locate_many(random_image(4), concepts(loc), vocab=vocab(loc), base="gradcam")  # the weights above
    b = loc.locate_many(loc.encode_image(random_image(4)), concepts(loc), vocab=vocab(loc), base="gradcam")
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
    plain = loc.locate_many(image, concepts(loc), method="base")
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
    maps = [r.token_map for r in loc.locate_many(random_image(6), names, method="base")]
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


# the Backend contract beyond the engine: plain forward, target module, randomized copy -----------
def _pixels(loc, *images) -> torch.Tensor:
    return loc.pixels(images)


def _params(backend) -> list[torch.nn.Parameter]:
    seen: set[int] = set()
    return [p for m in backend.modules() for p in m.parameters() if id(p) not in seen and not seen.add(id(p))]


def test_plain_forward_is_the_fast_path_at_zero_shift_and_passes_the_target_module(loc):
    pixels = _pixels(loc, random_image(12), random_image(13, 30, 41))
    stream, target, embedding, _ = engine.encode(loc.backend, pixels)
    seen = []
    hook = loc.backend.target_module().register_forward_hook(lambda module, args, out: seen.append(out.detach()))
    try:
        with torch.no_grad():
            plain = loc.backend.encode_pixels(pixels)
    finally:
        hook.remove()
    assert plain.shape == embedding.shape and plain.dtype == torch.float32 and not plain.requires_grad
    torch.testing.assert_close(plain, embedding, rtol=1e-4, atol=1e-5)
    assert len(seen) == 1  # the target module ran once, as a module, and gave A
    torch.testing.assert_close(seen[0], target, rtol=1e-4, atol=1e-5)
    z = engine.logits(plain, loc.head(concepts(loc)), loc.backend.logit_scale) + loc.config.logit_bias
    want = loc.scores(random_image(12), concepts(loc))[0]
    np.testing.assert_allclose(z[0].numpy(), [want[c] for c in concepts(loc)], rtol=1e-4, atol=1e-4)


def test_randomized_copy_redraws_matrices_and_leaves_the_original(loc):
    image = random_image(14)
    before = [r.token_map for r in loc.locate_many(image, concepts(loc), vocab=vocab(loc))]
    weights = [p.detach().clone() for p in _params(loc.backend)]
    clone = loc.backend.randomized(seed=0)
    assert type(clone) is type(loc.backend) and clone.config == loc.config and clone.name == loc.backend.name
    assert clone.tokenizer is loc.backend.tokenizer
    mine, theirs = _params(loc.backend), _params(clone)
    assert len(mine) == len(theirs) and not {id(p) for p in mine} & {id(p) for p in theirs}
    for p, q, w in zip(mine, theirs, weights):
        assert torch.equal(p, w)  # the original is untouched
        assert (not torch.equal(p, q)) if p.ndim >= 2 else torch.equal(p, q)
    assert all(torch.equal(p, q) for p, q in zip(theirs, _params(loc.backend.randomized(seed=0))))
    if not fixed_classes(loc):  # a probe's key is its head's, which the copy shares
        assert clone.fingerprint() != loc.backend.fingerprint()
    scrambled = zf.Localizer(clone, cache_dir=None).locate_many(image, concepts(loc), vocab=vocab(loc))
    assert not all(np.allclose(r.token_map, b, rtol=1e-3) for r, b in zip(scrambled, before))
    after = loc.locate_many(image, concepts(loc), vocab=vocab(loc))
    for r, b in zip(after, before):
        np.testing.assert_array_equal(r.token_map, b)


def test_eval_with_perturbation_and_the_randomized_baseline(loc):
    from zsfinercam.evaluation.evaluate import EvalItem, evaluate

    names = vocab(loc)
    mask = np.zeros((36, 44), bool)
    mask[5:20, 10:30] = True
    items = [EvalItem(random_image(15, 36, 44), names[0], names[1:3], None, mask, (10, 5, 30, 20), "tiny")]
    report = evaluate(loc, items, ("finer", "base", "random", "randomized"), perturbation=True, progress=False)
    assert [r["method"] for r in report.rows] == ["finer", "base", "random", "randomized"]
    for row in report.rows:
        assert 0.0 <= row["deletion"] <= 1.0 and 0.0 <= row["insertion"] <= 1.0 and np.isfinite(row["rd"])
        assert 0.0 <= row["iou"] <= 1.0 and 0.0 <= row["box_iou"] <= 1.0
    assert set(report.summary()) == {"finer", "base", "random", "randomized"}


def test_bench_plain_forward_baseline_and_gradcam_harness(loc):
    from zsfinercam.bench import run as bench

    s = bench.setup(loc, vocab(loc), 32, (1, 2), k=2, references=2, cached=False)
    floor = bench._floor(s, 2)
    torch.testing.assert_close(floor.float(), engine.encode(loc.backend, s.pixels[2])[2], rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        z = s.head(s.pixels[1])
    want = loc.scores(s.images[0], s.warm + s.refs)[0]
    np.testing.assert_allclose((z[0] + loc.config.logit_bias).numpy(), [want[c] for c in s.warm + s.refs],
                               rtol=1e-4, atol=1e-4)
    maps = bench._gradcam(s, 2, s.warm[0])
    assert maps.shape == (2, *loc.config.image_size) and np.isfinite(maps).all() and maps.max() > 0
    assert all(p.grad is None for p in _params(loc.backend))


# a backend written outside zsfinercam gets every default of the contract -------------------------
class ThirdPartyBackend(Backend):
    """Only the abstract methods: patch conv -> norm (A) -> mean over tokens -> projection; bag-of-bytes text."""

    name = "test-third-party"

    def __init__(self, seed: int = 0):
        torch.manual_seed(seed)
        self.net = torch.nn.ModuleDict({"patch": torch.nn.Conv2d(3, 8, 8, 8), "norm": torch.nn.LayerNorm(8),
                                        "proj": torch.nn.Linear(8, 6), "text": torch.nn.EmbeddingBag(256, 6)})
        self.config = ModelConfig("third", self.name, None, (32, 32), (32, 32), (8, 8), 0, 8, 6, 10.0,
                                  (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), "norm", "avg", 16)
        self.device = torch.device("cpu")
        self.tokenizer = lambda texts: torch.tensor([list(t.encode()[:16].ljust(16, b"\0")) for t in texts])

    @classmethod
    def from_pretrained(cls, name, *, pretrained, model_config, device, image_size):
        return cls()

    def tokenize(self, texts):
        return self.tokenizer(texts)

    def encode_text(self, tokens):
        with torch.inference_mode():
            return self.net["text"](tokens).clone()

    def trunk(self, pixels):
        with torch.no_grad():
            return self.net["patch"](pixels).flatten(2).transpose(1, 2)

    def target(self, stream):
        with torch.no_grad():
            return self.net["norm"](stream)

    def embed(self, stream, target, shift, cache=None):
        return self.net["proj"]((target[:, None] + shift[:, :, None]).mean(dim=2))


def test_a_third_party_backend_gets_a_fingerprint_and_the_disk_text_cache(tmp_path, monkeypatch):
    first = zf.Localizer(ThirdPartyBackend(), cache_dir=tmp_path)
    text = first.encode_text(["cat", "dog"])
    key = first.backend.fingerprint()
    assert key == ThirdPartyBackend().fingerprint() != ThirdPartyBackend(seed=1).fingerprint()
    assert [p.name.split("-")[0] for p in (tmp_path / "text").iterdir()] == [key]
    again = zf.Localizer(ThirdPartyBackend(), cache_dir=tmp_path)  # a new process would see the same
    monkeypatch.setattr(again.backend, "encode_text", lambda tokens: pytest.fail("the text tower was run again"))
    assert torch.equal(again.encode_text(["dog", "cat"]), text.flip(0))
    results = first.locate_many(random_image(16), ["cat"], vs=["dog"])
    assert np.isfinite(results[0].token_map).all()
    assert first.backend.target_module() is first.backend.net["norm"]
    pixels = _pixels(first, random_image(17))
    torch.testing.assert_close(first.backend.encode_pixels(pixels), engine.encode(first.backend, pixels)[2])
    clone = first.backend.randomized(seed=3)
    assert not torch.equal(clone.net["proj"].weight, first.backend.net["proj"].weight)
    assert clone.fingerprint() != key


def test_the_default_base_follows_what_the_backend_gives(tmp_path):
    """HiResCAM (the benchmark's best) where the backend gives per-token gradients; Grad-CAM on a
    backend written to the shift-only contract, where asking for an element-wise base is one line."""
    third = zf.Localizer(ThirdPartyBackend(), cache_dir=None)
    (res,) = third.locate_many(random_image(16), ["cat"], vs=["dog"])
    assert res.base == "gradcam" and third.options().base == "gradcam"
    with pytest.raises(zf.UsageError, match="no per-token gradients.*--base gradcam") as err:
        third.locate_many(random_image(16), ["cat"], vs=["dog"], base="hirescam")
    assert "\n" not in str(err.value)
    loc = zf.Localizer.from_pretrained("toy", device="cpu", cache_dir=None)
    image = random_image(18, 64, 64)
    (default,) = loc.locate_many(image, ["bird"], vs=["red tail"])
    (hires,) = loc.locate_many(image, ["bird"], vs=["red tail"], base="hirescam")
    assert default.base == "hirescam" and np.array_equal(default.token_map, hires.token_map)


def test_the_registry_knows_each_builtins_token_gradients_without_importing_it():
    """What the CLI resolves the default base with before a model loads agrees with the classes."""
    from zsfinercam.backends.registry import BUILTIN_TOKEN_GRADIENTS, BUILTINS, get_backend, token_gradients

    assert set(BUILTIN_TOKEN_GRADIENTS) == set(BUILTINS)
    for name in BUILTINS:
        assert token_gradients(name) is get_backend(name).token_gradients is BUILTIN_TOKEN_GRADIENTS[name]


def test_a_backend_that_cannot_wrap_a_held_model_says_so():
    with pytest.raises(zf.UsageError, match="cannot wrap a model you hold"):
        ThirdPartyBackend.from_model(torch.nn.Linear(1, 1), None)


def test_a_taken_backend_name_is_refused():
    with pytest.raises(ValueError, match="backend 'hf' is already registered by .*HFBackend"):
        zf.register_backend("hf")(ThirdPartyBackend)
    assert zf.get_backend("hf").__name__ == "HFBackend" and ThirdPartyBackend.name == "test-third-party"


# token removal (Backend.encode_kept) and per-map faithfulness --------------------------------------
def test_dropping_tokens_equals_the_model_on_the_kept_tokens_alone(loc):
    pixels = pixels_of(loc, random_image(21))
    n = loc.config.grid_size[0] * loc.config.grid_size[1]
    sets = [np.sort(np.random.default_rng(s).permutation(n)[:k]) for s, k in ((0, 3), (1, 3), (2, n - 2))]
    got = removal.kept_embeddings(loc.backend, pixels, sets)
    with torch.no_grad():
        for row, kept in zip(got, sets):
            torch.testing.assert_close(row[None], by_hand(loc, pixels, kept).float(), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(removal.kept_embeddings(loc.backend, pixels, [np.arange(n)]),
                                   loc.backend.encode_pixels(pixels), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(got[0], got[1])  # other tokens, another embedding


def test_the_api_number_is_the_formula_on_the_backends_own_sequences(loc):
    from zsfinercam.core.engine import logits

    names = list(loc.config.default_vocab)[:3] if loc.config.backend == "probe" else ["cat", "dog", "red fox"]
    image = random_image(22)
    res = loc.locate(image, names[0], vs=names[1:], faithfulness=True)
    text = loc.head(names)
    objective = Objective(0, (1, 2), res.alpha)
    pixels = pixels_of(loc, image)

    def value(kept):
        e = removal.kept_embeddings(loc.backend, pixels, [np.sort(kept)])
        return float(objective(logits(e, text, loc.backend.logit_scale))[0])

    n, seed = res.token_map.size, faith.image_seed(pixels.numpy())
    top = faith.top_sets(res.token_map, [n - 1], seed=seed)[0]
    want = expected(value, n, top, value(np.arange(n)), seed)  # O(all) on the kept path (feats': equal to 1e-5)
    assert res.faithfulness.score == pytest.approx(want, abs=2e-4)
    assert -1 <= res.faithfulness.score <= 1 and len(res.faithfulness.deletion) == len(faith.DELETION_LEVELS)


def test_a_backend_without_token_removal_refuses_faithfulness_with_one_line():
    third = zf.Localizer(ThirdPartyBackend(), cache_dir=None)
    with pytest.raises(zf.UsageError, match="cannot run its image tower on a subset of patch tokens") as err:
        third.locate_many(random_image(16), ["cat"], vs=["dog"], faithfulness=True)
    assert "\n" not in str(err.value)
