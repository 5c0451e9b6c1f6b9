"""LocateOptions: the one place options are checked; JSON round trips; how locate_many takes and returns them."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import random_image
from zsfinercam.errors import UsageError
from zsfinercam.options import (BASES, DEFAULT_ALPHA, DEFAULT_BASE, DEFAULT_NUM_REFERENCES, FALLBACK_BASE, METHODS,
                                OBJECTIVES, STRATEGIES, LocateOptions, OptionError)

VOCAB = ["cat", "dog", "bird", "red fox", "grey wolf"]


@pytest.mark.parametrize("kwargs, field, want", [
    ({}, "alpha", 1.0),
    ({"objective": "mean"}, "alpha", 0.6),
    ({"objective": "compare"}, "alpha", 1.0),
    ({"method": "base"}, "alpha", 0.0),
    ({"method": "base", "alpha": 0.5}, "alpha", 0.0),
    ({"alpha": 0}, "alpha", 0.0),
    ({"alpha": 2}, "alpha", 2.0),
    ({"alpha": np.float32(0.25)}, "alpha", 0.25),
    ({"num_references": np.int64(2)}, "num_references", 2),
    ({}, "num_references", DEFAULT_NUM_REFERENCES),
    ({}, "base", None),  # resolved per backend by `resolved` (the Localizer's façade), see below
    ({"base": "layercam"}, "base", "layercam"),
    ({"vs": "dog"}, "vs", ("dog",)),
    ({"vs": ["dog", "fox"]}, "vs", ("dog", "fox")),
    ({"vs": []}, "vs", None),
    ({"vocab": ["cat", "dog"]}, "vocab", ("cat", "dog")),
    ({"vocab": "cub200"}, "vocab", "cub200"),
    ({"vocab": Path("my/vocab.txt")}, "vocab", str(Path("my/vocab.txt"))),
    ({"templates": ["a {}."]}, "templates", ("a {}.",)),
    ({"parts": {"tail": ["red tail"], "wing": ("red wings",)}}, "parts",
     (("tail", ("red tail",)), ("wing", ("red wings",)))),
    ({"parts": "cub_parts"}, "parts", "cub_parts"),
    ({"contrast": "text"}, "contrast", "text"),
])
def test_values_are_resolved(kwargs, field, want):
    got = getattr(LocateOptions(**kwargs), field)
    assert got == want and type(got) is type(want)


@pytest.mark.parametrize("kwargs, field, message", [
    ({"alpha": float("nan")}, "alpha", "alpha must be a finite number >= 0"),
    ({"alpha": float("inf")}, "alpha", "alpha must be a finite number >= 0"),
    ({"alpha": -1.0}, "alpha", "alpha must be a finite number >= 0"),
    ({"alpha": True}, "alpha", "alpha must be"),
    ({"alpha": "1"}, "alpha", "alpha must be"),
    ({"method": "base", "alpha": float("nan")}, "alpha", "alpha must be"),
    ({"method": "cam"}, "method", "unknown method 'cam'; choose one of: finer, base"),
    ({"method": "gradcam"}, "method", "unknown method 'gradcam'; choose one of: finer, base"),
    ({"objective": "best"}, "objective", "unknown objective 'best'; choose one of: weighted, mean, compare"),
    ({"base": "scorecam"}, "base", "unknown base 'scorecam'; choose one of: gradcam, hirescam, layercam"),
    ({"contrast": "nope"}, "contrast", "unknown contrast 'nope'"),
    ({"num_references": 0}, "num_references", "num_references must be a positive integer"),
    ({"num_references": 1.5}, "num_references", "num_references must be a positive integer"),
    ({"num_references": True}, "num_references", "num_references must be a positive integer"),
    ({"vs": [1, 2]}, "vs", "vs must hold strings"),
    ({"vocab": 5}, "vocab", "vocab must be a list of strings"),
    ({"category": ["bird"]}, "category", "category must be one concept string"),
    ({"parts": {"tail": "red tail"}}, "parts", "parts must be a part vocabulary"),
    ({"parts": 3}, "parts", "parts must be a part vocabulary"),
])
def test_bad_values_name_the_option(kwargs, field, message):
    with pytest.raises(OptionError, match=message.replace("(", r"\(")) as err:
        LocateOptions(**kwargs)
    assert err.value.field == field and isinstance(err.value, UsageError)


def test_constants_agree_and_live_in_options_only():
    assert set(DEFAULT_ALPHA) == set(OBJECTIVES) and METHODS == ("finer", "base")
    assert BASES == ("gradcam", "hirescam", "layercam") and "parts" in STRATEGIES
    assert {DEFAULT_BASE, FALLBACK_BASE} <= set(BASES)
    from zsfinercam import localizer
    from zsfinercam.core import objectives
    from zsfinercam.evaluation import evaluate
    from zsfinercam.options import EVAL_METHODS

    assert EVAL_METHODS == ("finer", "base", "random", "randomized")
    assert not hasattr(localizer, "METHODS") and "METHODS" not in localizer.__all__
    assert not hasattr(objectives, "__all__") and not hasattr(objectives, "DEFAULT_ALPHA")
    assert evaluate.EVAL_METHODS is EVAL_METHODS and not hasattr(evaluate, "METHODS")


@pytest.mark.parametrize("given, token_gradients, want", [
    (None, True, DEFAULT_BASE), (None, False, FALLBACK_BASE), ("layercam", True, "layercam"),
    ("hirescam", False, "hirescam"),  # kept: the engine refuses it on such a backend, naming the fix
])
def test_resolved_fills_the_base_for_a_backend(given, token_gradients, want):
    options = LocateOptions(base=given, alpha=0.5)
    got = options.resolved(token_gradients)
    assert got.base == want and got.replace(base=None) == options.replace(base=None)
    assert got.resolved(not token_gradients) == got  # resolving twice changes nothing


def test_the_facade_resolves_every_field(tiny):
    from zsfinercam.backends import token_gradients

    got = tiny.options(objective="mean")
    assert (got.base, got.alpha) == (DEFAULT_BASE, 0.6)
    assert token_gradients(tiny.backend.name) is type(tiny.backend).token_gradients is True
    assert tiny.options(LocateOptions(base="gradcam")).base == "gradcam"


@pytest.mark.parametrize("options", [
    LocateOptions(),
    LocateOptions(vs=["dog", "fox"], objective="mean", alpha=0.3, templates=["a {}.", "the {}"], base="hirescam"),
    LocateOptions(vocab=VOCAB, contrast="text", num_references=2, category="animal"),
    LocateOptions(parts={"tail": ["red tail", "blue tail"], "wing": ["red wings"]}, method="base"),
])
def test_json_round_trip_is_exact(options):
    data = options.to_json()
    again = LocateOptions.from_json(json.loads(json.dumps(data)))
    assert again == options and hash(again) == hash(options) and again.to_json() == data


def test_from_json_and_build_refuse_unknown_keys():
    with pytest.raises(UsageError, match="unknown option 'alpah'"):
        LocateOptions.from_json({"alpah": 1})
    with pytest.raises(UsageError, match="JSON object"):
        LocateOptions.from_json(["alpha"])


def test_replace_validates_and_keeps_the_rest():
    base = LocateOptions(vs=["dog"], templates=["a {}."], base="layercam")
    assert base.replace(alpha=0.5) == LocateOptions(vs=["dog"], templates=["a {}."], base="layercam", alpha=0.5)
    assert base.replace(objective="mean").alpha == 1.0  # alpha stays as resolved ...
    assert base.replace(objective="mean", alpha=None).alpha == 0.6  # ... unless asked to resolve again
    with pytest.raises(OptionError, match="alpha"):
        base.replace(alpha=-1)
    plain = base.base_alone()
    assert (plain.method, plain.alpha, plain.vs, plain.templates, plain.base) == \
        ("base", 0.0, None, ("a {}.",), "layercam")


def test_options_are_frozen():
    with pytest.raises(AttributeError):
        LocateOptions().alpha = 2.0


def test_build_takes_options_or_keywords_not_both():
    opts = LocateOptions(alpha=0.5)
    assert LocateOptions.build(opts) is opts and LocateOptions.build(alpha=0.5) == opts
    with pytest.raises(UsageError, match="either options= or keyword arguments"):
        LocateOptions.build(opts, vs=["dog"])
    with pytest.raises(UsageError, match="must be a LocateOptions"):
        LocateOptions.build({"alpha": 0.5})


def test_import_loads_neither_torch_numpy_nor_cv2():
    code = ("import sys, zsfinercam.options, zsfinercam; zsfinercam.LocateOptions(alpha=1); zsfinercam.UsageError; "
            "print(sorted(m for m in ('torch', 'numpy', 'cv2') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_lazy_package_keeps_every_public_name():
    import zsfinercam

    for name in zsfinercam.__all__:
        assert getattr(zsfinercam, name) is not None
    assert zsfinercam.Localizer.__module__ == "zsfinercam.localizer"
    with pytest.raises(AttributeError):
        zsfinercam.no_such_name


# ------------------------------------------------------------------ through the Localizer
def test_keywords_and_options_give_the_same_maps(tiny):
    image = random_image(3)
    by_keywords = tiny.locate_many(image, ["cat", "dog"], vocab=VOCAB, alpha=0.7, num_references=2)
    by_options = tiny.locate_many(image, ["cat", "dog"], LocateOptions(vocab=VOCAB, alpha=0.7, num_references=2))
    for a, b in zip(by_keywords, by_options):
        assert a.references == b.references and a.alpha == b.alpha == 0.7
        np.testing.assert_array_equal(a.token_map, b.token_map)


def test_keywords_and_options_together_are_refused(tiny):
    with pytest.raises(UsageError, match="either options= or keyword arguments"):
        tiny.locate_many(random_image(3), ["cat", "dog"], LocateOptions(), alpha=0.5)
    with pytest.raises(UsageError, match="either options="):
        tiny.locate(random_image(3), "cat", vs=["dog"], options=LocateOptions())
    with pytest.raises(UsageError, match="unknown option 'alhpa'"):
        tiny.locate_many(random_image(3), ["cat", "dog"], alhpa=0.5)


def test_references_as_the_third_argument_are_refused(tiny):
    with pytest.raises(UsageError, match="options must be a LocateOptions, got list"):
        tiny.locate_many(random_image(3), ["cat"], ["dog"])


@pytest.mark.parametrize("make, nested, count", [
    (lambda loc, ims: ims[0], False, 1),
    (lambda loc, ims: [ims[0]], True, 1),
    (lambda loc, ims: tuple(ims), True, 2),
    (lambda loc, ims: ims, True, 2),
    (lambda loc, ims: loc.encode_image(ims[0]), False, 1),
    (lambda loc, ims: loc.encode_image([ims[0]]), True, 1),
    (lambda loc, ims: loc.encode_image(ims), True, 2),
    (lambda loc, ims: loc.encode_image(ims)[1], False, 1),
])
def test_locate_many_return_shape_follows_the_input(tiny, make, nested, count):
    from zsfinercam.result import LocateResult

    images = [random_image(5), random_image(6, 30, 20)]
    out = tiny.locate_many(make(tiny, images), ["cat", "dog"], vocab=VOCAB)
    rows = out if nested else [out]
    assert len(rows) == count and all(len(row) == 2 for row in rows)
    assert all(isinstance(r, LocateResult) for row in rows for r in row)


def test_compare_rows_follow_the_options(tiny):
    image = random_image(7)
    options = LocateOptions(vs=["bird"], objective="mean", templates=["a photo of a {}."])
    comparison = tiny.compare(image, ["cat", "dog"], options)
    finer = tiny.locate_many(image, ["cat", "dog"], options)
    alone = tiny.locate_many(image, ["cat", "dog"], options.base_alone())
    for got, want in [*zip(comparison.finer, finer), *zip(comparison.base_alone, alone)]:
        assert (got.references, got.objective, got.alpha) == (want.references, want.objective, want.alpha)
        np.testing.assert_allclose(got.token_map, want.token_map, rtol=1e-4, atol=1e-7)
    assert comparison.finer[0].alpha == 0.6 and comparison.base_alone[0].references == ()
    assert (comparison.base_alone[0].method, comparison.base_alone[0].objective) == ("base", "logit")
    with pytest.raises(UsageError, match="drop method="):
        tiny.compare(image, ["cat", "dog"], options.replace(method="base"))


def test_batch_records_the_options_and_resumes_only_with_the_same(tiny, tmp_path):
    from PIL import Image

    from zsfinercam.batch.run import run_batch

    path = tmp_path / "a.png"
    Image.fromarray(random_image(8)).save(path)
    options = LocateOptions(vs=["dog"], alpha=0.5, base="gradcam")
    run_batch(tiny, [path], tmp_path / "o", ["cat"], options=options, progress=False)
    settings = json.loads((tmp_path / "o" / "run.json").read_text())
    assert LocateOptions.from_json(settings["locate"]) == options
    again = run_batch(tiny, [path], tmp_path / "o", ["cat"], resume=True, vs=["dog"], alpha=0.5, base="gradcam",
                      progress=False)
    assert again.skipped == 1
    with pytest.raises(UsageError, match="other locate"):
        run_batch(tiny, [path], tmp_path / "o", ["cat"], resume=True, options=options.replace(alpha=0.4),
                  progress=False)
    with pytest.raises(UsageError, match="either options="):
        run_batch(tiny, [path], tmp_path / "p", ["cat"], options=options, alpha=0.5, progress=False)
