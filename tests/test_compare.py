"""`compare`: the CAM base alone / Finer-CAM / difference grid, through the API and a real subprocess."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
from PIL import Image

from conftest import random_image
from zsfinercam.io import render
from zsfinercam.compare import LEGEND, Comparison, diverging
from zsfinercam.errors import UsageError

CONCEPTS = ["cat", "dog", "barn owl"]


@pytest.fixture(scope="module")
def comparison(tiny):
    return tiny.compare(random_image(5, h=40, w=60), CONCEPTS)


def test_layout_and_cells(tiny, comparison):
    grid = np.asarray(comparison.grid(cell=60))
    lay = comparison.layout(60)
    assert (lay.cell_width, lay.cell_height) == (60, 40)  # 40 x 60 image: cells 60 x 40
    assert lay.size(3) == (lay.label_width + 3 * 60, lay.caption_height + 3 * 40 + lay.legend_height)
    assert grid.shape == (lay.size(3)[1], lay.size(3)[0], 3)
    small = np.asarray(Image.fromarray(comparison.finer[0].image).resize((60, 40), Image.BILINEAR))
    top = lay.caption_height
    for i in range(3):
        x = lay.label_width + 60 * i
        alone, finer = (cv2.resize(r.norm_map, (60, 40), interpolation=cv2.INTER_LINEAR).clip(0, 1)
                        for r in (comparison.base_alone[i], comparison.finer[i]))
        cells = [render.overlay(small, alone), render.overlay(small, finer), diverging(small, finer - alone)]
        for r, want in enumerate(cells):
            assert (grid[top + 40 * r:top + 40 * (r + 1), x:x + 60] == want).all()
    legend = grid[top + 3 * 40:]
    assert legend.shape[0] == lay.legend_height and (legend != 255).any()


def test_captions_hold_the_references_in_full_and_scale_with_the_cell(tiny):
    from PIL import ImageDraw

    comp = tiny.compare(random_image(5, h=40, w=60), ["a small brown bird with a long striped tail", "cat"],
                        vs=["a very long reference concept that cannot fit one line", "dog"])
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    lines = comp.caption(0, draw, render.font(11), 54)
    assert len(lines) > 4 and all(draw.textlength(ln, font=render.font(11)) <= 54 for ln in lines)
    text = " ".join(lines)
    assert "a small brown bird with a long striped tail" in text
    for ref in comp.finer[0].references:
        assert ref in text.replace("- ", "-")
    p = comp.finer[0].probability
    assert f"p {p:.2f}" in text and comp.to_dict()["concepts"][0]["probability"] == round(p, 6)
    small, large = comp.layout(96), comp.layout(384)
    assert large.font_size > small.font_size and large.pitch > small.pitch
    assert "red" in LEGEND[1] and "blue" in LEGEND[1]
    assert comp.legend[1].startswith(f"{comp.rows[2]}:") and comp.legend[0].startswith(comp.rows[0])


def test_cells_keep_within_four_to_one(tiny):
    tall = tiny.compare(random_image(2, h=400, w=2), CONCEPTS[:2])
    assert tall.layout(30).cell_height == 120 and tall.grid(cell=30).size == tall.layout(30).size(2)
    wide = tiny.compare(random_image(2, h=3, w=900), CONCEPTS[:2])
    assert wide.layout(40).cell_height == 10 and wide.grid(cell=40).size == wide.layout(40).size(2)


def test_rows_are_what_they_say(tiny, comparison):
    image = comparison.finer[0].image  # direct path (no Jacobian), one call per method
    alones, finers = tiny.locate_many(image, CONCEPTS, method="base"), tiny.locate_many(image, CONCEPTS)
    for i, (alone, finer) in enumerate(zip(alones, finers)):
        np.testing.assert_allclose(comparison.base_alone[i].token_map, alone.token_map, rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(comparison.finer[i].token_map, finer.token_map, rtol=1e-4, atol=1e-7)
        assert comparison.finer[i].references == finer.references and comparison.base_alone[i].references == ()
        assert comparison.base_alone[i].objective == "logit" and comparison.base_alone[i].method == "base"
    diff = comparison.difference(0)
    assert diff.shape == (40, 60) and diff.min() >= -1 and diff.max() <= 1


def test_the_base_is_in_the_rows_and_the_json(tiny):
    image = random_image(5, h=40, w=60)
    comparison = tiny.compare(image, CONCEPTS[:2], base="layercam")
    assert comparison.base == "layercam" and comparison.rows == ("Layer-CAM", "Finer-CAM", "Finer - Layer")
    assert comparison.to_dict()["base"] == "layercam" and comparison.to_dict()["rows"] == list(comparison.rows)
    alone = tiny.locate_many(image, CONCEPTS[:2], method="base", base="layercam")
    for got, want in zip(comparison.base_alone, alone):
        assert got.base == want.base == "layercam"
        np.testing.assert_allclose(got.token_map, want.token_map, rtol=1e-4, atol=1e-7)
    assert tiny.compare(image, CONCEPTS[:2], base="gradcam").rows == ("Grad-CAM", "Finer-CAM", "Finer - Grad")


def test_diverging_colours():
    image = np.full((1, 3, 3), 200, np.uint8)
    out = diverging(image, np.array([[1.0, 0.0, -1.0]]))
    assert out[0, 0].tolist() == [220, 30, 30] and out[0, 2].tolist() == [30, 60, 220]
    assert out[0, 1].tolist() == [236, 236, 236]  # 0.35 * 200 + 0.65 * 255


def test_compare_refuses(tiny):
    with pytest.raises(UsageError, match="both methods"):
        tiny.compare(random_image(1), CONCEPTS, method="base")
    with pytest.raises(UsageError, match="one image"):
        tiny.compare([random_image(1), random_image(2)], CONCEPTS)
    with pytest.raises(ValueError, match="one base-alone and one Finer-CAM"):
        Comparison([], [])


def test_compare_through_the_cli(tiny_files, tmp_path):
    cfg, weights = tiny_files
    path = tmp_path / "птица 1.png"
    Image.fromarray(random_image(7, h=30, w=45)).save(path)
    before = path.read_bytes()
    concepts = ["red-tailed hawk", "красный хвост", "a small brown bird with a long striped tail and a pale belly",
                "cooper's hawk"]
    proc = subprocess.run(
        [sys.executable, "-m", "zsfinercam", "compare", str(path), *concepts, "--model", "t", "--model-config",
         str(cfg), "--pretrained", str(weights), "--device", "cpu", "--cell", "90", "--out", str(tmp_path / "out"),
         "--contrast", "text", "--vocab", "cub200", "--json"],
        capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout)
    assert [c["concept"] for c in record["concepts"]] == concepts
    assert all(c["contrast"] == "text" and len(c["references"]) == 3 for c in record["concepts"])
    with Image.open(record["files"]["grid"]) as grid:
        assert grid.size == tuple(record["grid_size"])
        assert grid.size[0] > 4 * 90 and grid.size[1] > 3 * 60  # labels, captions and legend around the cells
    assert json.loads(open(record["files"]["json"], encoding="utf-8").read())["concepts"] == record["concepts"]
    assert path.read_bytes() == before


def test_towers_with_a_costly_jacobian_take_the_direct_path(tmp_path):
    """A mean-pooled probe runs its last block per Jacobian row: cached features must not build it."""
    from tiny_timm import PROBE_CLASSES, build_probe_dinov2

    loc = build_probe_dinov2(tmp_path)
    assert loc.backend.jacobian_chunk  # the premise: this tower's Jacobian is costly
    image = random_image(3)
    feats = loc.encode_image(image)
    cached = loc.compare(feats, PROBE_CLASSES[:2])
    assert feats.jacobian is None
    direct = loc.locate_many(image, PROBE_CLASSES[:2])
    for c, d in zip(cached.finer, direct):
        np.testing.assert_allclose(c.token_map, d.token_map, rtol=1e-5, atol=1e-7)
