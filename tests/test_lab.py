"""The prompt lab: its plain functions, the launched app through gradio_client, notebook display."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from zsfinercam.errors import UsageError
from zsfinercam.lab import session

BIRD = Path(__file__).resolve().parents[1] / "examples" / "bird.png"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def loc():
    from zsfinercam.localizer import Localizer

    return Localizer.from_pretrained("toy", cache_dir=None)


@pytest.fixture(scope="module")
def gradio_env(tmp_path_factory):
    """Analytics off and a private upload folder, for this module's app."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GRADIO_ANALYTICS_ENABLED", "False")
        mp.setenv("GRADIO_TEMP_DIR", str(tmp_path_factory.mktemp("gradio")))
        yield


# plain functions -------------------------------------------------------------
def test_parse_lines_keeps_order_and_drops_blanks_and_repeats():
    assert session.parse_lines(" red tail \n\n  blue head\nred tail\n") == ["red tail", "blue head"]
    assert session.parse_lines(None) == []


@pytest.mark.parametrize("kwargs, message", [
    (dict(concepts=" \n "), "no concepts given"),
    (dict(concepts="bird", vocab="/etc/passwd"), "unknown vocabulary '/etc/passwd'"),
    (dict(concepts="bird", templates="../x.txt"), "unknown template set"),
    (dict(concepts="bird", contrast="closest"), "unknown contrast 'closest'; choose one of"),
    (dict(concepts="bird", alpha=float("nan")), "alpha must be a finite number"),
    (dict(concepts="bird", method="score-cam"), "unknown method 'score-cam'"),
    (dict(concepts="bird", objective="max"), "unknown objective 'max'"),
    (dict(concepts="bird", base="scorecam"), "unknown base 'scorecam'; choose one of: gradcam, hirescam"),
    (dict(concepts="bird", faithfulness="yes"), "unknown faithfulness 'yes'; choose one of: off, both, deletion"),
])
def test_parse_request_refuses_bad_input_with_one_line(kwargs, message):
    with pytest.raises(UsageError, match=message) as err:
        session.parse_request(**kwargs)
    assert "\n" not in str(err.value)


def test_request_options_maps_every_field():
    from zsfinercam.options import LocateOptions

    req = session.parse_request("a\nb", "c", "parts", "cub200", 0.5, "short", "finer", "mean")
    assert session.request_options(req) == LocateOptions(vs=("c",), vocab="cub200", contrast="parts",
                                                         parts="cub_parts", alpha=0.5, objective="mean",
                                                         templates="short")
    assert session.request_options(session.parse_request("a", method="base")).alpha == 0.0
    assert session.request_options(session.parse_request("a")) == LocateOptions()
    req = session.parse_request("a", method="base", base="layercam")
    assert req.base == "layercam" and session.request_options(req) == LocateOptions(alpha=0.0, base="layercam")


def test_the_request_carries_the_base_to_the_maps_and_captions(loc):
    req = session.parse_request("red tail", "blue head", base="hirescam")
    result = session.run_request(loc, session.FeatureCache(), BIRD, req)
    want = loc.compare(str(BIRD), ["red tail"], vs=["blue head"], base="hirescam")
    np.testing.assert_allclose(result.comparison.finer[0].token_map, want.finer[0].token_map, rtol=1e-4, atol=1e-7)
    assert session.summary(result)["results"][0]["base"] == "hirescam"
    assert [caption for _, caption in session.gallery(result)] == \
        ["red tail · HiResCAM", "red tail · Finer-CAM", "red tail · Finer - HiRes"]


@pytest.mark.parametrize("references, objective", [("", "weighted"), ("blue head\ngreen tail", "mean")])
def test_run_request_gives_locates_maps(loc, references, objective):
    cache = session.FeatureCache()
    req = session.parse_request("red tail\nbird", references, objective=objective)
    result = session.run_request(loc, cache, BIRD, req)
    finer = loc.locate_many(str(BIRD), ["red tail", "bird"], vs=references.split("\n") if references else None,
                            objective=objective)
    alone = loc.locate_many(str(BIRD), list(req.concepts), method="base")
    for mine, theirs in [(result.comparison.finer, finer), (result.comparison.base_alone, alone)]:
        for a, b in zip(mine, theirs):
            assert (a.concept, a.references) == (b.concept, b.references)
            np.testing.assert_allclose(a.token_map, b.token_map, rtol=1e-4, atol=1e-5)
            assert a.peak == b.peak
    assert not result.cached and session.run_request(loc, cache, BIRD, req).cached


def test_cache_is_keyed_by_content_and_bounded(loc, tmp_path):
    copy = tmp_path / "copy.png"
    shutil.copyfile(BIRD, copy)
    cache = session.FeatureCache(max_items=2)
    first, hit = session.features_for(loc, cache, BIRD)
    assert not hit and session.features_for(loc, cache, copy) == (first, True)  # same bytes, other path
    others = []
    for i in range(3):
        path = tmp_path / f"other{i}.png"
        from PIL import Image

        Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8)).save(path)
        others.append(path)
        session.features_for(loc, cache, path)
    assert len(cache) == 2 and not session.features_for(loc, cache, BIRD)[1]  # least recently used went
    one = session.features_nbytes(first)
    small = session.FeatureCache(max_items=10, max_bytes=one + 1)
    for path in others:
        session.features_for(loc, small, path)
    assert len(small) == 1 and small.nbytes <= one + 1


def test_bad_image_file_names_only_the_file(loc, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    with pytest.raises(Exception, match="^notes.txt is not an image PIL can read") as err:
        session.features_for(loc, session.FeatureCache(), text)
    assert str(tmp_path) not in str(err.value)


def test_layout_scores_references_neighbours_and_downloads(loc, tmp_path):
    req = session.parse_request("red tail\nbird", "blue head\ngreen tail")
    result = session.run_request(loc, session.FeatureCache(), BIRD, req)
    rows = session.score_rows(result)
    assert [r[:3] for r in rows[:3]] == [["red tail", "red tail", "concept"], ["red tail", "blue head", "reference"],
                                         ["red tail", "green tail", "reference"]]
    z = [result.comparison.finer[0].scores[n] for n in ("red tail", "blue head", "green tail")]
    expected = np.exp(z) / np.exp(z).sum()
    np.testing.assert_allclose([r[4] for r in rows[:3]], expected, atol=1e-4)
    assert "**red tail** vs blue head, green tail; rule *vs*" in session.references_text(result)
    near = loc.neighbors("red tail", None, session.NEIGHBOURS)
    assert result.neighbours["red tail"] == near
    assert len(session.gallery(result)) == 6 and session.gallery(result)[1][1] == "red tail · Finer-CAM"
    files = session.write_downloads(result, tmp_path / "dl")
    names = sorted(Path(f).name for f in files)
    stems = [res.default_stem() for res in result.comparison.finer]  # the one naming rule
    assert stems[0].startswith("bird-") and "_red-tail-" in stems[0] and "_finer-weighted-a1-hirescam-" in stems[0]
    assert names == sorted([*(f"{s}{end}" for s in stems for end in ("_overlay.png", "_heatmap.npy", ".json")),
                            "compare_grid.png", "results.json"])
    record = json.loads((tmp_path / "dl" / "results.json").read_text())
    assert record["results"][0]["peak"] == list(result.comparison.finer[0].peak)
    assert "token_map" not in record["results"][0]


def test_the_status_says_when_the_toy_cannot_read_a_concept(loc):
    known = session.run_request(loc, session.FeatureCache(), BIRD, session.parse_request("red tail", "blue tail"))
    assert known.notice is None and "\n" not in session.status_text(known, (64, 64))
    req = session.parse_request("red tail\nred-tailed hawk", "osprey")
    status = session.status_text(session.run_request(loc, session.FeatureCache(), BIRD, req), (64, 64))
    assert "**Note:** the toy model knows only synthetic birds" in status
    assert "'hawk' in 'red-tailed hawk'; 'osprey' in 'osprey'" in status and "--model ViT-B-16" in status


# notebook display ----------------------------------------------------------------
def test_results_display_themselves_in_notebooks(loc):
    feats = loc.encode_image(str(BIRD))
    res = loc.locate(feats, "red tail", vs=["blue head"], base="gradcam")  # the repr names other bases
    comp = loc.compare(feats, ["red tail", "bird"], vs=["blue head"])
    for obj in (res, comp):
        png = obj._repr_png_()
        assert png.startswith(PNG_MAGIC)
    for obj in (res, comp, loc, feats):
        text = repr(obj)
        assert "\n" not in text and "array" not in text and len(text) < 400, text
    assert repr(res) == (f"LocateResult('red tail', score {res.scores['red tail']:.3f}, vs [blue head], "
                         f"peak {res.peak}, bbox {res.bbox()}, finer, base gradcam)")
    assert res.overlay(size=300).size == (300, 300)
    from PIL import Image
    import io

    assert Image.open(io.BytesIO(res._repr_png_())).size == (384, 384)  # a 128 px image shown larger


# the launched app ---------------------------------------------------------------
@pytest.fixture(scope="module")
def served(loc, gradio_env):
    from gradio_client import Client

    from zsfinercam.lab.app import build_app

    demo = build_app(loc, [BIRD])
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True)
    assert url.startswith("http://127.0.0.1:")
    try:
        yield Client(url, verbose=False)
    finally:
        demo.close()


def _locate(client, image, concepts, **kwargs):
    from gradio_client import handle_file

    return client.predict(image=handle_file(str(image)), concepts=concepts, api_name="/locate", **kwargs)


def test_api_locate_gives_the_clis_peak(served, tmp_path, capsys):
    from zsfinercam.cli import main

    main(["locate", str(BIRD), "bird", "--out", str(tmp_path), "--json"])
    cli = json.loads(capsys.readouterr().out)
    out = _locate(served, BIRD, "bird")
    record = out[4]["results"][0]
    assert record["peak"] == cli["peak"] and record["references"] == cli["references"]
    assert record["scores"] == pytest.approx(cli["scores"], abs=1e-5) and "token_map" not in record


def test_new_concepts_on_a_cached_image_skip_the_trunk(served, loc, tmp_path):
    calls = []
    trunk = loc.backend.trunk

    def counted(pixels):
        calls.append(len(pixels))
        return trunk(pixels)

    loc.backend.trunk = counted
    try:
        _locate(served, BIRD, "bird")
        before = len(calls)
        out = _locate(served, BIRD, "red tail\nblue head", references="green tail")
        assert len(calls) == before and out[4]["cached"] and "the trunk did not run" in out[6]
        assert [r["concept"] for r in out[4]["results"]] == ["red tail", "blue head"]
        other = tmp_path / "flipped.png"
        from PIL import Image

        Image.open(BIRD).transpose(Image.FLIP_LEFT_RIGHT).save(other)
        out = _locate(served, other, "bird")
        assert len(calls) == before + 1 and not out[4]["cached"] and "the trunk ran" in out[6]
    finally:
        del loc.backend.trunk


def test_the_api_zooms_and_records_the_window(served, tmp_path):
    from PIL import Image

    from zsfinercam.synthetic import make_scene

    bird = "red-headed blue-tailed striped-winged bird"
    scene = tmp_path / "scene.png"
    make_scene(bird, 3, 64, 0.33).image.save(scene)
    record = _locate(served, scene, bird, references="red-headed red-tailed striped-winged bird",
                     zoom=True)[4]["results"][0]
    x0, y0, x1, y1 = record["window"]
    assert record["zoom"] is True and x1 - x0 == y1 - y0 < 194 and x0 <= record["peak"][0] < x1
    black = tmp_path / "black.png"
    Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(black)  # alpha 50: empty maps, no window
    empty = _locate(served, black, bird, references="red-headed red-tailed striped-winged bird", alpha=50,
                    zoom=True)[4]["results"][0]
    assert empty["window"] is None and empty["peak"] is None and empty["zoom"] is True


def test_bad_input_gives_one_line_and_the_server_keeps_serving(served, tmp_path):
    from gradio_client.exceptions import AppError

    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(AppError, match=r"^notes.png is not an image PIL can read .*check the file$"):
        _locate(served, text, "bird")
    with pytest.raises(AppError, match="^no concepts given"):
        _locate(served, BIRD, "  \n")
    with pytest.raises(AppError, match="^unknown vocabulary 'nope'"):
        _locate(served, BIRD, "bird", vocab="nope")
    assert _locate(served, BIRD, "bird")[4]["results"][0]["concept"] == "bird"


def test_the_api_takes_a_base_and_defaults_it(served):
    from zsfinercam.options import DEFAULT_BASE

    assert _locate(served, BIRD, "bird", base="layercam")[4]["results"][0]["base"] == "layercam"
    assert _locate(served, BIRD, "bird")[4]["results"][0]["base"] == DEFAULT_BASE


@pytest.mark.parametrize("base", ["gradcam", "hirescam", "layercam"])
def test_an_empty_base_alone_map_flows_through_the_page(served, tmp_path, base):
    """A solid colour gives the base alone nothing to point at (peak None): the page answers anyway."""
    from PIL import Image

    red = tmp_path / "red.png"
    Image.new("RGB", (64, 64), (255, 0, 0)).save(red)
    gallery, _, _, _, record, files, status, *_ = _locate(served, red, "striped wings", references="a tree",
                                                         base=base)
    (result,) = record["results"]
    assert result["base"] == base and result["base_alone"] == {"peak": None, "bbox": None, "window": None}
    assert result["concept"] == "striped wings" and result["references"] == ["a tree"]
    assert len(gallery) == 3 and any(Path(f).name == "compare_grid.png" for f in files) and "ms" in status
def test_the_api_scores_faithfulness_in_the_table_and_the_json(served):
    out = _locate(served, BIRD, "red tail", references="blue head", faithfulness="deletion")
    record, table = out[4]["results"][0], out[1]
    faith = record["faithfulness"]
    assert faith["mode"] == "deletion" and -1 <= faith["score"] <= 1 and faith["insertion"] is None
    assert "faithfulness" in record["base_alone"]
    assert table["headers"][-1] == "faithfulness" and table["data"][0][-1] == f"{faith['score']:.2f}"
    assert table["data"][1][-1] == ""  # a reference row
    plain = _locate(served, BIRD, "red tail", references="blue head")
    assert "faithfulness" not in plain[4]["results"][0] and plain[1]["data"][0][-1] == ""


def test_a_server_path_named_by_the_browser_is_never_read(served, loc, tmp_path):
    import httpx

    secret = tmp_path / "secret.png"
    shutil.copyfile(BIRD, secret)
    base = served.src.rstrip("/")
    payload = {"path": str(secret), "meta": {"_type": "gradio.FileData"}}
    event = httpx.post(f"{base}/gradio_api/call/locate",
                       json={"data": [payload, "bird", "", "default", "model classes", None, None, "finer",
                                      "weighted"]}).json()["event_id"]
    answer = httpx.get(f"{base}/gradio_api/call/locate/{event}", timeout=120).text
    assert answer.startswith("event: error") and "secret" not in answer and "peak" not in answer


def test_image_over_max_pixels_is_refused_in_the_page(loc, gradio_env, tmp_path):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    from zsfinercam.lab.app import build_app
    from zsfinercam.localizer import Localizer

    small = Localizer(loc.backend, max_pixels=100)
    demo = build_app(small)
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True)
    try:
        with pytest.raises(AppError, match=r"^bird.png has 128 x 128 = 16,384 pixels, over the limit of 100"):
            _locate(Client(url, verbose=False), BIRD, "bird")
    finally:
        demo.close()


# the command ------------------------------------------------------------------------
def test_lab_without_gradio_says_how_to_install(monkeypatch, capsys):
    from zsfinercam.cli import main

    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio now fails
    with pytest.raises(SystemExit) as done:
        main(["lab"])
    assert done.value.code == 2
    assert capsys.readouterr().err == ('zsfinercam: error: the prompt lab needs gradio; install it with: '
                                       'pip install "zsfinercam[lab]"\n')


def test_lab_help_lists_the_safety_options(capsys):
    from zsfinercam.cli import main

    main(["lab", "--help"])
    text = capsys.readouterr().out
    assert "--host" in text and "127.0.0.1" in text and "--share" in text


def test_lab_binds_loopback_and_shares_only_when_asked(monkeypatch):
    from zsfinercam.cli import main
    from zsfinercam.lab import app

    calls = []
    monkeypatch.setattr(app, "launch", lambda loc, examples, **kw: calls.append((loc, examples, kw)))
    main(["lab", str(BIRD)])
    main(["lab", "--host", "0.0.0.0", "--port", "9000", "--share"])
    (loc, examples, first), (_, _, second) = calls
    assert first == dict(host="127.0.0.1", port=7860, share=False) and loc.config.name == "toy"
    assert second == dict(host="0.0.0.0", port=9000, share=True)
    assert examples[0] == BIRD and all(Path(p).is_file() for p in examples)


def test_feature_bytes_count_the_element_wise_jacobian(loc):
    feats = loc.encode_image(str(BIRD))
    before = session.features_nbytes(feats)
    loc.locate(feats, "red tail", vs=["blue head"], base="hirescam")  # cached features: builds output_jacobian
    matrix, record = feats.output_jacobian
    added = sum(t.numel() * t.element_size() for t in (matrix, record.v, record.weights))
    assert session.features_nbytes(feats) == before + added


def test_a_cached_image_never_shows_another_uploaders_file_name(loc, tmp_path):
    """The feature cache is shared and keyed by content: each result names this request's upload."""
    import shutil

    first, second = tmp_path / "alice_private_name.png", tmp_path / "bob.png"
    shutil.copyfile(BIRD, first)
    shutil.copyfile(BIRD, second)
    cache, req = session.FeatureCache(), session.parse_request("bird")
    session.run_request(loc, cache, first, req)
    again = session.run_request(loc, cache, second, req)
    assert again.cached and {r["source"] for r in session.summary(again)["results"]} == {"bob.png"}
