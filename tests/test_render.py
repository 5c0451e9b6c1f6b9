"""Rendering and the result type: exact peaks and boxes, types preserved, files round-trip."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image

from zsfinercam import render
from zsfinercam.files import safe_stem
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
    from zsfinercam import metrics

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
    # hottest pixel leans red, coldest leans blue (JET)
    assert got[2, 2, 0] > got[2, 2, 2] and got[0, 0, 2] > got[0, 0, 0]


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
    assert Image.open(files["overlay"]).size == (16, 12)
    assert not list((tmp_path / "out").glob(".tmp-*"))
