"""Rendering and the result type: exact peaks and boxes, types preserved, files round-trip."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from zsfinercam import render
from zsfinercam.result import LocateResult, safe_stem


def hand_map():
    m = np.zeros((6, 8), np.float32)
    m[1:3, 1:4] = 0.6   # a warm block
    m[2, 2] = 1.0       # the peak inside it
    m[5, 7] = 0.7       # a separate hot pixel, not connected to the peak
    return m


def test_peak_and_box_of_the_region_holding_the_peak():
    m = hand_map()
    assert render.peak(m) == (2, 2)
    assert render.bbox(m, 0.5) == (1, 1, 3, 2)
    assert render.bbox(m, 0.65) == (2, 2, 2, 2)
    assert render.bbox(np.zeros((3, 3), np.float32)) is None


def test_upsample_keeps_range_and_size():
    up = render.upsample(hand_map(), (30, 41))
    assert up.shape == (30, 41) and up.dtype == np.float32
    assert 0.0 <= up.min() and up.max() <= 1.0


@pytest.mark.parametrize("as_pil", [True, False])
def test_overlay_returns_the_type_it_was_given_and_leaves_the_input_alone(as_pil):
    arr = np.full((6, 8, 3), 100, np.uint8)
    image = Image.fromarray(arr) if as_pil else arr
    out = render.overlay(image, hand_map(), alpha=0.5)
    assert isinstance(out, Image.Image) == as_pil
    got = np.asarray(out)
    assert got.shape == (6, 8, 3) and not np.array_equal(got, arr)
    np.testing.assert_array_equal(np.asarray(image), np.full((6, 8, 3), 100, np.uint8))
    # hottest pixel leans red (JET); where the map is 0 the image is kept exactly
    assert got[2, 2, 0] > got[2, 2, 2]
    np.testing.assert_array_equal(got[hand_map() == 0], arr[hand_map() == 0])


def test_overlay_blends_in_proportion_to_the_map():
    rng = np.random.RandomState(0)
    image = rng.randint(0, 256, (6, 8, 3)).astype(np.uint8)
    heat = hand_map()
    got = render.overlay(image, heat, alpha=0.6).astype(np.float64)
    want = image + 0.6 * heat[..., None] * (render.colorize(heat).astype(np.float64) - image)
    np.testing.assert_allclose(got, np.round(want), atol=1)
    np.testing.assert_array_equal(got[heat == 0], image[heat == 0])


@pytest.mark.parametrize("text, expected", [
    ("red-tailed hawk", "red-tailed-hawk-"),
    ("a/b\\c:d", "a-b-c-d-"),
    ("Ωμέγα 鳥", "ωμέγα-鳥-"),
    ("...", ""),
])
def test_safe_stems(text, expected):
    stem = safe_stem(text)
    assert stem.startswith(expected) and "/" not in stem and "\\" not in stem
    assert len(stem.split("-")[-1]) == 8


def test_safe_stems_are_short_and_distinct():
    long_a, long_b = "x" * 500 + "a", "x" * 500 + "b"
    assert len(safe_stem(long_a)) <= 57 and safe_stem(long_a) != safe_stem(long_b)


def make_result(**over):
    kw = dict(concept="hawk", references=("owl",), scores={"hawk": 2.0, "owl": 1.0},
              token_map=hand_map(), image=np.zeros((12, 16, 3), np.uint8))
    kw.update(over)
    return LocateResult(**kw)


def test_heatmap_is_the_normalised_map_at_image_size():
    res = make_result(token_map=hand_map() * 3.0)
    np.testing.assert_allclose(res.norm_map, hand_map(), atol=1e-7)
    np.testing.assert_array_equal(res.heatmap, render.upsample(hand_map(), (12, 16)))
    assert res.heatmap is res.heatmap  # made once
    assert make_result(token_map=np.full((2, 2), 5.0, np.float32)).heatmap.max() == 0.0


@pytest.mark.parametrize("over, message", [
    ({"token_map": np.ones(4)}, "expected token_map of shape"),
    ({"norm_map": np.zeros((5, 8), np.float32)}, r"expected norm_map of shape \(6, 8\)"),
    ({"norm_map": hand_map() * 2}, r"values in \[0, 1\]"),
    ({"image": np.zeros((6, 8), np.uint8)}, "expected image"),
])
def test_result_validation(over, message):
    with pytest.raises(ValueError, match=message):
        make_result(**over)


def test_save_round_trip(tmp_path):
    res = make_result()
    files = res.save(tmp_path / "out", "hawk")
    np.testing.assert_array_equal(np.load(files["heatmap"]), res.heatmap)
    record = json.loads(open(files["json"], encoding="utf-8").read())
    assert record["peak"] == list(res.peak) and record["bbox"] == list(res.bbox())
    assert record["references"] == ["owl"] and np.allclose(record["token_map"], hand_map())
    assert Image.open(files["overlay"]).size == (512, 384)  # small images are drawn large
    assert np.load(files["heatmap"]).shape == (12, 16)  # the map stays at the image's size
    assert not list((tmp_path / "out").glob(".tmp-*"))


def test_empty_map_has_no_peak_and_no_box():
    res = make_result(token_map=np.zeros((6, 8), np.float32))
    assert res.empty and res.peak is None and res.bbox() is None and res.bbox(0.2) is None
    record = res.to_dict()
    assert record["peak"] is None and record["bbox"] is None
    assert json.loads(json.dumps(record))["peak"] is None
    np.testing.assert_array_equal(np.asarray(res.overlay(min_side=0)), res.image)
    assert not make_result().empty and make_result().peak == render.peak(make_result().heatmap)


def test_probability_is_the_softmax_over_concept_and_references():
    import math

    res = make_result(references=("owl", "eagle"), scores={"hawk": 2.0, "owl": 1.0, "eagle": 2.5, "kite": 9.0})
    want = math.exp(2.0) / (math.exp(2.0) + math.exp(1.0) + math.exp(2.5))  # kite is no reference
    assert res.probability == pytest.approx(want, rel=1e-12)
    assert res.to_dict()["probability"] == round(want, 6)
    big = make_result(scores={"hawk": 1000.0, "owl": 999.0})
    assert big.probability == pytest.approx(1 / (1 + math.exp(-1.0)))
    assert make_result(references=()).probability is None


def test_small_images_are_upscaled_in_the_overlay_only():
    res = make_result()
    big = res.overlay()
    assert big.size == (512, 384) and res.heatmap.shape == (12, 16)
    np.testing.assert_array_equal(np.asarray(big), np.asarray(render.overlay(
        Image.fromarray(res.image).resize((512, 384), Image.BICUBIC), render.upsample(res.norm_map, (384, 512)))))
    assert res.overlay(min_side=0).size == (16, 12)
    large = make_result(image=np.zeros((520, 700, 3), np.uint8))
    assert large.overlay().size == (700, 520)


def test_caption_adds_a_band_below_the_overlay():
    res = make_result(references=("owl", "eagle"), scores={"hawk": 2.0, "owl": 1.0, "eagle": 0.5})
    plain, captioned = np.asarray(res.overlay()), np.asarray(res.overlay(caption=True))
    assert captioned.shape[1] == plain.shape[1] and captioned.shape[0] > plain.shape[0]
    np.testing.assert_array_equal(captioned[:plain.shape[0]], plain)
    assert (captioned[plain.shape[0]:] != 255).any()  # text and colour bar drawn
    lines = res.caption_lines()
    assert "hawk" in lines[0] and "z 2.00" in lines[0] and "p 0.63" in lines[0]
    assert "owl (1.00)" in lines[1] and "eagle (0.50)" in lines[1]


@pytest.mark.parametrize("fmt, suffix, dtype, tol", [
    ("npy", ".npy", np.float32, 0.0), ("npy16", ".npy", np.float16, 1e-3), ("png16", ".png", np.uint16, 1e-3)])
def test_heatmap_formats_round_trip(tmp_path, fmt, suffix, dtype, tol):
    from zsfinercam.result import load_heatmap

    rng = np.random.RandomState(1)
    res = make_result(token_map=rng.rand(6, 8).astype(np.float32), image=np.zeros((30, 41, 3), np.uint8))
    files = res.save(tmp_path, "hawk", files=("heatmap",), heatmap_format=fmt)
    path = files["heatmap"]
    assert path.endswith("_heatmap" + suffix) and set(files) == {"heatmap"}
    raw = np.load(path) if suffix == ".npy" else np.asarray(Image.open(path))
    assert raw.dtype == dtype and raw.shape == (30, 41)
    back = load_heatmap(path)
    assert back.dtype == np.float32 and back.shape == (30, 41)
    assert np.abs(back - res.heatmap).max() <= tol


@pytest.mark.parametrize("kinds", [("overlay",), ("heatmap", "json"), ("json",), ("overlay", "heatmap", "json")])
def test_save_writes_only_the_files_asked_for(tmp_path, kinds):
    res = make_result()
    files = res.save(tmp_path, "hawk", files=kinds)
    assert set(files) == set(kinds)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(os.path.basename(v) for v in files.values())
    if "json" in kinds:
        assert json.loads(open(files["json"], encoding="utf-8").read())["files"] == files


def test_save_rejects_unknown_kinds_and_formats(tmp_path):
    with pytest.raises(ValueError, match="expected some of overlay, heatmap, json"):
        make_result().save(tmp_path, "hawk", files=("overlays",))
    with pytest.raises(ValueError, match="unknown heatmap format"):
        make_result().save(tmp_path, "hawk", heatmap_format="jpg")
    assert not list(tmp_path.iterdir())
