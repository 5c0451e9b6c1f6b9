"""Empty maps (no token stands out: peak and box None) flow through every surface: the API, `locate`
(--json and its terminal line), `compare` (JSON, line and grid), the batch manifest. (The lab's
page and API: tests/test_lab.py.) A solid-colour image gives the toy model such maps."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from zsfinercam.cli import main

CONCEPT, REFERENCE = "striped wings", "a tree"


@pytest.fixture(scope="module")
def toy():
    from zsfinercam.localizer import Localizer

    return Localizer.from_pretrained("toy", device="cpu", cache_dir=None)


@pytest.fixture
def red(tmp_path):
    path = tmp_path / "red.png"
    Image.new("RGB", (64, 64), (255, 0, 0)).save(path)
    return path


def test_the_api_gives_empty_maps_without_a_peak(toy, red):
    comparison = toy.compare(str(red), [CONCEPT], vs=[REFERENCE], base="gradcam")
    for res in (*comparison.base_alone, *comparison.finer):
        assert res.empty and res.peak is None and res.bbox() is None
        assert res.location() == {"peak": None, "bbox": None, "window": None} and res.to_dict()["peak"] is None
        assert "(empty map: no peak)" in res.caption_lines()[0] and "peak None" in repr(res)
    (record,) = comparison.to_dict()["concepts"]
    assert record["base_alone"] == record["finer"] == {"peak": None, "bbox": None, "window": None}
    assert comparison.grid(cell=32).size == comparison.layout(32).size(1)


@pytest.mark.parametrize("method", ["finer", "base"])
def test_locate_prints_and_saves_an_empty_map(red, tmp_path, capsys, method):
    args = ["locate", str(red), CONCEPT, "--vs", REFERENCE, "--base", "gradcam", "--method", method,
            "--out", str(tmp_path / "out")]
    main([*args, "--json"])
    record = json.loads(capsys.readouterr().out)
    assert (record["peak"], record["bbox"], record["method"]) == (None, None, method)
    assert json.loads(open(record["files"]["json"], encoding="utf-8").read())["peak"] is None
    assert np.load(record["files"]["heatmap"]).max() == 0.0
    main(args)
    out, err = capsys.readouterr()
    assert out.startswith(f"{CONCEPT}: score") and " peak - bbox - -> " in out and "empty" in err


def test_compare_prints_and_draws_empty_maps(red, tmp_path, capsys):
    args = ["compare", str(red), CONCEPT, "--vs", REFERENCE, "--base", "gradcam", "--out", str(tmp_path / "out")]
    main([*args, "--json"])
    record = json.loads(capsys.readouterr().out)
    assert record["concepts"][0]["base_alone"] == {"peak": None, "bbox": None, "window": None}
    with Image.open(record["files"]["grid"]) as grid:
        assert grid.size == tuple(record["grid_size"])
    main(args)
    assert "peak Grad-CAM - Finer-CAM -" in capsys.readouterr().out


def test_the_batch_manifest_records_empty_maps(toy, red, tmp_path):
    from zsfinercam.batch.run import run_batch

    summary = run_batch(toy, [red], tmp_path / "out", [CONCEPT], vs=[REFERENCE], base="gradcam", progress=False)
    (record,) = [json.loads(line) for line in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()]
    assert summary.ok == 1 and record["status"] == "ok"
    assert (record["outputs"][0]["peak"], record["outputs"][0]["bbox"]) == (None, None)
