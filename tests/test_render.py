"""Rendering and the result type: exact peaks and boxes, types preserved, files round-trip."""
from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest
from PIL import Image

from zsfinercam.io import render
from zsfinercam.io.files import safe_stem
from zsfinercam.result import LocateResult


def hand_map():
    m = np.zeros((6, 8), np.float32)
    m[1:3, 1:4] = 0.6   # a warm block
    m[2, 2] = 1.0       # the peak inside it
    m[5, 7] = 0.7       # a separate hot pixel, not connected to the peak
    return m


def test_peak_and_box_of_the_region_holding_the_peak():
    m = hand_map()
    assert render.peak(m) == (2, 2)
    # exclusive ends (changed by design from inclusive (1, 1, 3, 2) and (2, 2, 2, 2)): the
    # warm block covers columns 1..3 and rows 1..2; the lone hot pixel at (7, 5) is not in it
    assert render.bbox(m, 0.5) == (1, 1, 4, 3)
    assert render.bbox(m, 0.65) == (2, 2, 3, 3)
    assert render.bbox(np.zeros((3, 3), np.float32)) is None


def test_a_results_box_is_the_box_an_eval_manifest_would_hold():
    """One convention: a hot rectangle over columns 2..5 and rows 1..3 is (2, 1, 6, 4) everywhere."""
    from zsfinercam.evaluation import metrics

    token_map = np.zeros((8, 10), np.float32)
    token_map[1:4, 2:6] = 1.0
    res = make_result(token_map=token_map, image=np.zeros((8, 10, 3), np.uint8))  # image size: no resampling
    truth = np.zeros((8, 10), bool)
    truth[1:4, 2:6] = True
    assert res.bbox() == (2, 1, 6, 4) == metrics.mask_to_bbox(truth) == metrics.map_to_bbox(res.heatmap)
    assert res.to_dict()["bbox"] == [2, 1, 6, 4]
    assert metrics.box_iou(res.bbox(), (2, 1, 6, 4)) == 1.0
    one = np.zeros((8, 10), np.float32)
    one[5, 7] = 1.0
    assert make_result(token_map=one, image=np.zeros((8, 10, 3), np.uint8)).bbox() == (7, 5, 8, 6)  # 1 pixel


def test_result_boxes_hold_the_peaks_blob_and_metrics_the_largest():
    m = np.zeros((6, 8), np.float32)
    m[0:4, 0:2] = 0.8  # a large warm blob
    m[5, 6:8] = 1.0    # the small peak
    assert render.bbox(m, 0.5) == (6, 5, 8, 6)
    assert render.bbox(m, 0.5, component="largest") == (0, 0, 2, 4)
    assert render.bbox(m, 0.5, component="all") == (0, 0, 8, 6)
    with pytest.raises(ValueError, match="component must be one of"):
        render.bbox(m, 0.5, component="biggest")


def test_minmax():
    np.testing.assert_array_equal(render.minmax(np.array([2.0, 4.0, 3.0])), [0.0, 1.0, 0.5])
    assert render.minmax(np.array([[1, 2]], np.int64)).dtype == np.float32
    assert not render.minmax(np.full((2, 2), 7.0)).any() and render.minmax(np.zeros(0)).shape == (0,)


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
])
def test_safe_stems_keep_readable_parts(text, expected):
    stem = safe_stem(text)
    assert stem.startswith(expected) and re.fullmatch(r"[0-9a-f]{8}", stem[len(expected):])


HOSTILE = ["...", "..", ".", "../../etc/passwd", "..\\..\\boot.ini", "/abs/path", "C:\\x", "a\0b", "\0",
           ".hidden", "-rf", "__init__", "  spaced  ", "", "CON", "a" * 300, "é" * 300, "caf\udce9", "鳥/../鳥",
           "a.b", "a b", "a-b", "A B", "tab\there", "new\nline", "\u202eevil", "x" * 500 + "a", "x" * 500 + "b"]


@pytest.mark.parametrize("text", HOSTILE)
def test_safe_stems_are_plain_file_names(text, tmp_path):
    stem = safe_stem(text)
    assert stem and len(stem) <= 48 + 9
    assert not any(c in stem for c in "/\\\0.:") and ".." not in stem
    assert not stem.startswith(("-", "_")) and stem == stem.strip()
    assert re.fullmatch(r"(?:[\w-]+-)?[0-9a-f]{8}", stem)  # what batch recognises as its own outputs
    (tmp_path / f"{stem}.json").write_text("{}")  # a legal name in this very folder
    assert [p.name for p in tmp_path.iterdir()] == [f"{stem}.json"]


def test_safe_stems_of_distinct_texts_are_distinct():
    stems = [safe_stem(t) for t in HOSTILE]
    assert len(set(stems)) == len(set(HOSTILE))
    assert safe_stem("Hawk") != safe_stem("hawk")  # same slug, different hash
    assert safe_stem("a.jpg", key="/x/a.jpg") != safe_stem("a.jpg", key="/y/a.jpg")
    assert safe_stem("鳥") == safe_stem("鳥")  # stable


def make_result(**over):
    kw = dict(concept="hawk", references=("owl",), scores={"hawk": 2.0, "owl": 1.0},
              token_map=hand_map(), image=np.zeros((12, 16, 3), np.uint8), base="hirescam")
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
        # the JSON names its files relative to its own folder, so the folder can be moved
        assert json.loads(open(files["json"], encoding="utf-8").read())["files"] == \
            {k: os.path.basename(v) for k, v in files.items()}


def test_save_rejects_unknown_kinds_and_formats(tmp_path):
    with pytest.raises(ValueError, match="expected some of overlay, heatmap, json"):
        make_result().save(tmp_path, "hawk", files=("overlays",))
    with pytest.raises(ValueError, match="unknown heatmap format"):
        make_result().save(tmp_path, "hawk", heatmap_format="jpg")
    assert not list(tmp_path.iterdir())
