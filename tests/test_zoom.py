"""Zoom (zsfinercam.zoom): window geometry, the coarse-to-fine search, the map pasted back, and
zoom on every surface (API, CLI, batch, lab, eval), empty maps included."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from test_inputs import cli
from zsfinercam.io import render
from zsfinercam.options import LocateOptions, OptionError
from zsfinercam.synthetic import make_scene
from zsfinercam.zoom import Found, candidate_windows, search, with_margin

BIRD_CLASS = "red-headed blue-tailed striped-winged bird"
OTHER = ["red-headed red-tailed striped-winged bird", "blue-headed blue-tailed striped-winged bird"]


@pytest.fixture(scope="module")
def toy():
    from zsfinercam.localizer import Localizer

    return Localizer.from_pretrained("toy", device="cpu", cache_dir=None)


SCENE = make_scene(BIRD_CLASS, 3, 64, 0.33)  # a 64-px bird tile on a 194-px cluttered canvas


@pytest.fixture(scope="module")
def scene() -> np.ndarray:
    return np.asarray(SCENE.image)


SOLID = np.zeros((90, 120, 3), np.uint8)  # black: with alpha 50 the map is empty (references win)


class TrunkCounter:
    """Counts the images the backend's trunk is given."""

    def __init__(self, loc, monkeypatch):
        self.images = 0
        real = loc.backend.trunk

        def trunk(pixels):
            self.images += pixels.shape[0]
            return real(pixels)

        monkeypatch.setattr(loc.backend, "trunk", trunk)


# window geometry -----------------------------------------------------------------
@pytest.mark.parametrize("parent, expected", [
    ((0, 0, 90, 90), [(0, 0, 60, 60), (30, 0, 90, 60), (0, 30, 60, 90), (30, 30, 90, 90)]),
    ((0, 0, 120, 90), [(0, 0, 60, 60), (30, 0, 90, 60), (60, 0, 120, 60),
                       (0, 30, 60, 90), (30, 30, 90, 90), (60, 30, 120, 90)]),
    ((10, 20, 70, 80), [(10, 20, 50, 60), (30, 20, 70, 60), (10, 40, 50, 80), (30, 40, 70, 80)]),
    ((0, 0, 194, 194), [(0, 0, 129, 129), (65, 0, 194, 129), (0, 65, 129, 194), (65, 65, 194, 194)]),
])
def test_candidate_windows_are_squares_at_half_window_stride_inside_the_parent(parent, expected):
    assert candidate_windows(parent) == expected


def test_a_tall_parent_gets_windows_spread_evenly_edge_to_edge():
    windows = candidate_windows((0, 0, 40, 300))  # side 27: stride at most 13.5 px, 21 steps down, 1 across
    assert len(windows) == 44 and {w[0] for w in windows} == {0, 13}
    assert all(w[2] - w[0] == w[3] - w[1] == 27 for w in windows)
    ys = sorted({w[1] for w in windows})
    assert ys[0] == 0 and ys[-1] == 273 and len(ys) == 22 and max(np.diff(ys)) <= 13.5


@pytest.mark.parametrize("window, margin, size, expected", [
    ((30, 30, 60, 60), 0.0, (90, 120), (30, 30, 60, 60)),
    ((30, 30, 60, 60), 0.2, (90, 120), (24, 24, 66, 66)),  # 6 px on every side
    ((0, 10, 40, 50), 0.25, (90, 120), (0, 0, 60, 60)),  # moved right and down to stay inside, not cut
    ((70, 50, 110, 90), 0.25, (90, 120), (60, 30, 120, 90)),  # moved up and left
    ((10, 10, 80, 80), 0.5, (90, 120), (0, 0, 90, 90)),  # at most the shorter side
])
def test_a_margin_grows_the_window_about_its_centre_and_keeps_it_inside(window, margin, size, expected):
    assert with_margin(window, margin, size) == expected


def density(subject):
    """A hand-made scorer: the fraction of a window that the subject box covers."""
    sx0, sy0, sx1, sy1 = subject

    def score(windows):
        out = []
        for x0, y0, x1, y1 in windows:
            inter = max(0, min(x1, sx1) - max(x0, sx0)) * max(0, min(y1, sy1) - max(y0, sy0))
            out.append(inter / ((x1 - x0) * (y1 - y0)))
        return out

    return score


def test_search_refines_coarse_to_fine_while_the_score_rises():
    score = density((60, 60, 80, 80))
    found = search((90, 90), score, score([(0, 0, 90, 90)])[0], min_side=10)
    # 90 -> (30, 30, 90, 90) -> (50, 50, 90, 90) -> 27 px: (50, 50, 77, 77) and (63, 63, 90, 90) tie; the first wins
    assert found == Found((50, 50, 77, 77), 289 / 729, 400 / 8100, 12)
    stopped = search((90, 90), score, score([(0, 0, 90, 90)])[0], min_side=30)  # no 27-px windows
    assert stopped.window == (50, 50, 90, 90) and stopped.scored == 8
    assert search((90, 90), score, 0.0, min_side=10, levels=1).window == (30, 30, 90, 90)


def test_search_keeps_the_whole_image_when_no_window_scores_above_it():
    flat = search((90, 120), lambda windows: [1.0] * len(windows), 1.0, min_side=10)
    assert flat == Found(None, 1.0, 1.0, 6)
    filling = density((0, 0, 90, 90))  # a subject filling the frame: every window scores at most as high
    assert search((90, 90), filling, 1.0, min_side=10).window is None
    assert search((20, 20), filling, 1.0, min_side=16) == Found(None, 1.0, 1.0, 0)  # too small to zoom


# options -----------------------------------------------------------------------------
def test_zoom_options_are_checked_and_round_trip():
    opts = LocateOptions(zoom=True, zoom_on=" bird ")
    assert opts.zoom_on == "bird" and LocateOptions.from_json(opts.to_json()) == opts
    assert opts.base_alone().zoom and opts.base_alone().zoom_on == "bird"
    for kwargs, field in [({"zoom": 1}, "zoom"), ({"zoom_on": "bird"}, "zoom_on"),
                          ({"zoom": True, "zoom_on": "  "}, "zoom_on"), ({"zoom": True, "zoom_on": 3}, "zoom_on")]:
        with pytest.raises(OptionError) as err:
            LocateOptions(**kwargs)
        assert err.value.field == field and "\n" not in str(err.value)


# the API -------------------------------------------------------------------------------
def test_a_zoomed_map_is_the_windows_map_pasted_back(toy, scene):
    res = toy.locate(scene, BIRD_CLASS, vs=OTHER, zoom=True)
    x0, y0, x1, y1 = res.window
    assert res.zoom and res.zoom_on is None and x1 - x0 == y1 - y0 < 194
    bird = np.logical_or.reduce(list(SCENE.masks.values()))
    assert bird[y0:y1, x0:x1].sum() == bird.sum()  # the whole bird is inside
    heat = res.heatmap
    assert heat.shape == scene.shape[:2] and res.image is not None and res.image.shape == scene.shape
    outside = np.ones(heat.shape, bool)
    outside[y0:y1, x0:x1] = False
    assert not heat[outside].any()
    inside = render.upsample(res.norm_map, (y1 - y0, x1 - x0))
    np.testing.assert_array_equal(heat[y0:y1, x0:x1], inside)
    px, py = render.peak(inside)
    assert res.peak == (x0 + px, y0 + py)  # full-image pixels
    bx0, by0, bx1, by1 = render.bbox(inside)
    assert res.bbox() == (x0 + bx0, y0 + by0, x0 + bx1, y0 + by1)
    crop = toy.locate(np.ascontiguousarray(scene[y0:y1, x0:x1]), BIRD_CLASS, vs=OTHER)
    np.testing.assert_allclose(res.token_map, crop.token_map, rtol=1e-4, atol=1e-5)
    assert res.to_dict()["window"] == [x0, y0, x1, y1] and res.to_dict()["zoom"] is True


def test_the_overlay_outlines_the_window(toy, scene):
    res = toy.locate(scene, BIRD_CLASS, vs=OTHER, zoom=True)
    plain = np.asarray(render.overlay(Image.fromarray(scene), res.heatmap))
    drawn = np.asarray(res.overlay(min_side=1))
    x0, y0, x1, y1 = res.window
    assert (drawn[y0, x0 + 5:x1 - 5] != plain[y0, x0 + 5:x1 - 5]).any()  # the top edge is drawn
    assert (drawn[y0 + 10:y1 - 10, x0 + 10:x1 - 10] == plain[y0 + 10:y1 - 10, x0 + 10:x1 - 10]).all()


def test_the_whole_image_window_reuses_the_first_pass(toy, monkeypatch):
    feats = toy.encode_image(SOLID)
    counter = TrunkCounter(toy, monkeypatch)
    res = toy.locate(feats, BIRD_CLASS, vs=OTHER, zoom=True)
    assert res.window is None and res.zoom and feats.windows[(0, None)] is feats
    assert counter.images == 6  # the first level's windows only: scored, none above the whole image
    plain = toy.locate(feats, BIRD_CLASS, vs=OTHER)
    np.testing.assert_array_equal(res.token_map, plain.token_map)
    np.testing.assert_array_equal(res.heatmap, plain.heatmap)


def test_a_zoomed_locate_on_an_image_takes_the_windows_it_scores(toy, scene, monkeypatch):
    counter = TrunkCounter(toy, monkeypatch)
    res = toy.locate(scene, BIRD_CLASS, vs=OTHER, zoom=True)
    assert res.window is not None and counter.images in (1 + 4, 1 + 8, 1 + 12)  # whole + 4 per level


def test_new_prompts_on_a_zoomed_cached_image_run_no_trunk(toy, scene, monkeypatch):
    feats = toy.encode_image(scene)
    first = toy.locate(feats, BIRD_CLASS, vs=OTHER, zoom=True)
    counter = TrunkCounter(toy, monkeypatch)
    again = toy.locate(feats, BIRD_CLASS, vs=OTHER, zoom=True)
    np.testing.assert_array_equal(first.token_map, again.token_map)
    toy.locate_many(feats, OTHER, vs=[BIRD_CLASS], zoom=True)
    toy.compare(feats, [BIRD_CLASS], vs=OTHER, zoom=True)
    assert counter.images <= 8 and first.window == again.window  # only windows no earlier prompt scored


def test_zoom_on_gives_every_concept_one_window(toy, scene):
    on = toy.locate_many(scene, [BIRD_CLASS, *OTHER], zoom=True, zoom_on=BIRD_CLASS)
    own = toy.locate_many(scene, [BIRD_CLASS, *OTHER], zoom=True)
    assert len({r.window for r in on}) == 1 and all(r.zoom_on == BIRD_CLASS for r in on)
    assert on[0].window == own[0].window and [r.concept for r in own] == [BIRD_CLASS, *OTHER]


def test_zoom_lands_in_the_file_names_and_the_settings_hash(toy, scene, tmp_path):
    zoomed = toy.locate(scene, BIRD_CLASS, vs=OTHER, zoom=True)
    plain = toy.locate(scene, BIRD_CLASS, vs=OTHER)
    on = toy.locate(scene, BIRD_CLASS, vs=OTHER, zoom=True, zoom_on="bird")
    stems = {zoomed.default_stem(), plain.default_stem(), on.default_stem()}
    assert len(stems) == 3 and "-zoom-" in zoomed.default_stem() and "-zoom-" not in plain.default_stem()
    files = zoomed.save(tmp_path)
    assert json.loads(open(files["json"]).read())["window"] == list(zoomed.window)


def test_a_solid_image_with_zoom_flows_through_locate_compare_and_save(toy, tmp_path):
    for base in ("gradcam", "hirescam"):
        res = toy.locate(SOLID, BIRD_CLASS, vs=OTHER, zoom=True, base=base, alpha=50.0)
        assert res.window is None and res.empty and res.peak is None and res.to_dict()["peak"] is None
        res.save(tmp_path / base)
        res.overlay(caption=True)
        repr(res)
        comp = toy.compare(SOLID, [BIRD_CLASS], vs=OTHER, zoom=True, base=base, alpha=50.0)
        assert comp.to_dict()["concepts"][0]["finer"]["window"] is None
        comp.grid()


def test_compare_draws_both_rows_in_the_same_window(toy, scene):
    comp = toy.compare(scene, [BIRD_CLASS], vs=OTHER, zoom=True)
    finer, alone = comp.finer[0], comp.base_alone[0]
    assert finer.window == alone.window is not None
    assert comp.to_dict()["concepts"][0]["base_alone"]["window"] == list(finer.window)
    comp.grid(64)


# the CLI -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def scene_file(tmp_path_factory, scene):
    path = tmp_path_factory.mktemp("scene") / "scene.png"
    Image.fromarray(scene).save(path)
    return path


def test_cli_locate_zoom_records_the_window(scene_file, tmp_path):
    done = cli(["locate", scene_file, BIRD_CLASS, "--vs", OTHER[0], "--zoom", "--out", tmp_path, "--json", "-q"])
    assert done.code == 0, done.err
    record = json.loads(done.out)
    assert record["zoom"] is True and record["zoom_on"] is None and len(record["window"]) == 4
    saved = json.loads((tmp_path / record["files"]["json"].split("/")[-1]).read_text())
    assert saved["window"] == record["window"] and saved["peak"] == record["peak"]
    line = cli(["locate", scene_file, BIRD_CLASS, "--vs", OTHER[0], "--zoom", "--out", tmp_path, "-q"])
    assert f"window {tuple(record['window'])}" in line.out


def test_cli_zoom_on_and_its_errors(scene_file, tmp_path):
    done = cli(["locate", scene_file, BIRD_CLASS, "--vs", OTHER[0], "--zoom-on", BIRD_CLASS,
                "--out", tmp_path, "--json", "-q"])
    assert done.code == 0 and json.loads(done.out)["zoom_on"] == BIRD_CLASS
    bad = cli(["locate", scene_file, BIRD_CLASS, "--zoom-on", " ", "--out", tmp_path])
    assert bad.code == 2 and len(bad.err) == 1 and "--zoom-on" in bad.err[0] and "non-blank" in bad.err[0]


def test_cli_on_a_solid_image_notes_that_the_whole_image_was_mapped(tmp_path):
    path = tmp_path / "grey.png"
    Image.fromarray(SOLID).save(path)
    done = cli(["locate", path, BIRD_CLASS, "--vs", OTHER[0], "--zoom", "--alpha", 50, "--out", tmp_path / "out"])
    assert done.code == 0 and "window -" in done.out
    assert any("no window scored above the whole image" in line for line in done.err)
    grid = cli(["compare", path, BIRD_CLASS, "--vs", OTHER[0], "--zoom", "--out", tmp_path / "out", "-q"])
    assert grid.code == 0 and "window -" in grid.out


def test_cli_compare_zoom_json(scene_file, tmp_path):
    done = cli(["compare", scene_file, BIRD_CLASS, "--vs", OTHER[0], "--zoom", "--out", tmp_path, "--json", "-q"])
    assert done.code == 0, done.err
    concept = json.loads(done.out)["concepts"][0]
    assert concept["finer"]["window"] == concept["base_alone"]["window"] and len(concept["finer"]["window"]) == 4


# batch ---------------------------------------------------------------------------------
def _digests(folder) -> dict:
    return {p.relative_to(folder).as_posix(): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in folder.rglob("*") if p.is_file() and p.name != ".lock"}


def test_batch_with_zoom_is_byte_identical_across_runs_and_resumes(toy, tmp_path):
    from zsfinercam.batch.run import MANIFEST_NAME, run_batch

    folder = tmp_path / "in"
    folder.mkdir()
    for seed in range(3):
        Image.fromarray(np.asarray(make_scene(BIRD_CLASS, seed, 64, 0.5).image)).save(folder / f"s{seed}.png")
    Image.fromarray(SOLID).save(folder / "solid.png")
    images = sorted(folder.iterdir())
    options = LocateOptions(vs=OTHER, zoom=True)
    for name in ("one", "two"):
        summary = run_batch(toy, images, tmp_path / name, [BIRD_CLASS], batch_size=3, options=options, progress=False)
        assert (summary.ok, summary.failed) == (4, 0)
    one, two = tmp_path / "one", tmp_path / "two"
    assert _digests(one) == _digests(two)
    records = [json.loads(line) for line in (one / MANIFEST_NAME).read_text().splitlines()]
    windows = [r["outputs"][0]["window"] for r in records]
    assert [w is None for w in windows] == [False, False, False, True] and json.loads(
        (one / "run.json").read_text())["locate"]["zoom"] is True
    manifest = (two / MANIFEST_NAME).read_text().splitlines(keepends=True)
    (two / MANIFEST_NAME).write_text(manifest[0])  # as if stopped after the first image
    resumed = run_batch(toy, images, two, [BIRD_CLASS], batch_size=3, options=options, resume=True, progress=False)
    assert (resumed.ok, resumed.skipped) == (3, 1)
    assert _digests(one) == _digests(two)


def test_cli_batch_zoom_flags_reach_the_run(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(SOLID).save(folder / "solid.png")
    done = cli(["batch", folder, "-c", BIRD_CLASS, "--vs", OTHER[0], "--zoom-on", "bird", "--out", tmp_path / "o",
                "-q"])
    assert done.code == 0, done.err
    record = json.loads((tmp_path / "o" / "manifest.jsonl").read_text())
    assert record["outputs"][0]["zoom_on"] == "bird" and record["outputs"][0]["window"] is None


# eval ----------------------------------------------------------------------------------
def test_eval_subject_scale_and_zoom_rows(toy):
    from zsfinercam.evaluation.evaluate import evaluate, synthetic_items

    items = synthetic_items(3, subject_scale=0.5, size=64)
    assert items[0].image.shape == (128, 128, 3) and items[0].mask.shape == (128, 128)
    assert synthetic_items(2, size=64)[0].image.shape == (64, 64, 3)
    report = evaluate(toy, items, ["finer", "random"], zoom=True, progress=False)
    assert [r["method"] for r in report.rows[:3]] == ["finer", "random", "finer+zoom"]
    zoomed = [r for r in report.rows if r["method"] == "finer+zoom"]
    assert len(zoomed) == 3 and all("window" in r for r in zoomed)
    assert set(report.summary()) == {"finer", "random", "finer+zoom"}


def test_cli_eval_zoom(tmp_path):
    done = cli(["eval", "--synthetic", 2, "--subject-scale", 0.5, "--zoom", "--methods", "finer", "--json", "-q"])
    assert done.code == 0, done.err
    record = json.loads(done.out)
    assert set(record["summary"]) == {"finer", "finer+zoom"}
    bad = cli(["eval", "--synthetic", 2, "--subject-scale", 0])
    assert bad.code == 2 and len(bad.err) == 1 and "--subject-scale" in bad.err[0]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"image": "x.png", "concept": "a"}\n')
    wrong = cli(["eval", manifest, "--subject-scale", 0.5])
    assert wrong.code == 2 and "--synthetic" in wrong.err[-1]


# the lab -------------------------------------------------------------------------------
def test_lab_request_carries_zoom():
    from zsfinercam.lab import session

    request = session.parse_request("a", zoom=True)
    assert request.zoom and session.request_options(request).zoom
    assert not session.request_options(session.parse_request("a")).zoom


def test_a_window_must_beat_its_parent_by_more_than_float_noise():
    """A blank image scores every window as the whole image, up to batch rounding: no zoom."""
    from zsfinercam.zoom import MIN_GAIN, search

    noisy = search((90, 90), lambda windows: [1.0 + 1e-6] * len(windows), 1.0, 1)
    assert noisy.window is None
    real = search((90, 90), lambda windows: [1.0 + 10 * MIN_GAIN] * len(windows), 1.0, 1, levels=1)
    assert real.window == (0, 0, 60, 60)


def test_interactive_settings_switch_zoom_and_faithfulness():
    from zsfinercam.cli.interactive import _apply, _describe
    from zsfinercam.errors import UsageError

    options = LocateOptions()
    on = _apply(options, "zoom_on", "bird", {})
    assert on.zoom and on.zoom_on == "bird" and "zoom on" in _describe(on) and "zoom_on bird" in _describe(on)
    off = _apply(on, "zoom", "off", {})
    assert not off.zoom and off.zoom_on is None
    faith = _apply(off, "faithfulness", "deletion", {})
    assert faith.faithfulness == "deletion" and "faithfulness deletion" in _describe(faith)
    with pytest.raises(UsageError, match="zoom: on or off"):
        _apply(options, "zoom", "maybe", {})
