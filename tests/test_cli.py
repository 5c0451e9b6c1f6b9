"""The CLI through real subprocesses: files written, JSON parses, bad input gives one line."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import random_image
from test_inputs import without_notes


def run(*args, cwd=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "zsfinercam", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=300)


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "bird photo.png"
    Image.fromarray(random_image(0, 45, 60)).save(path)
    return path


def tiny_args(tiny_files):
    cfg, weights = tiny_files
    return ["--model", "tiny", "--model-config", cfg, "--pretrained", weights, "--device", "cpu"]


def test_locate_json_and_files(tiny_files, image, tmp_path):
    out = tmp_path / "out"
    proc = run("locate", image, "red hawk", "barn owl", "Ωμέγα/鳥", *tiny_args(tiny_files), "--out", out, "--json")
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["concept"] for r in records] == ["red hawk", "barn owl", "Ωμέγα/鳥"]
    for r in records:
        assert set(r) >= {"concept", "references", "scores", "peak", "bbox", "files"}
        assert r["contrast"] == "logits" and r["concept"] not in r["references"] and r["references"]
        x, y = r["peak"]
        assert 0 <= x < 60 and 0 <= y < 45
        for path in r["files"].values():
            assert os.path.isfile(path) and os.path.dirname(path) == str(out)
        assert Image.open(r["files"]["overlay"]).size == (512, 384)  # small images are drawn large
        assert np.load(r["files"]["heatmap"]).shape == (45, 60)  # the map keeps the image's size
        z = np.array([r["scores"][r["concept"]], *(r["scores"][ref] for ref in r["references"])], np.float64)
        assert r["probability"] == pytest.approx(np.exp(z[0]) / np.exp(z).sum(), abs=2e-6)


def test_locate_with_explicit_references_prints_a_summary(tiny_files, image, tmp_path):
    proc = run("locate", image, "hawk", "--vs", "owl", "--vs", "eagle", *tiny_args(tiny_files), "--out", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("hawk: score") and "vs [owl, eagle]" in proc.stdout
    assert ", p 0." in proc.stdout and "(scores " in proc.stdout and "peak (" in proc.stdout


def test_locate_saves_only_the_files_asked_for_in_the_format_asked_for(tiny, tiny_files, image, tmp_path):
    from zsfinercam.result import load_heatmap

    out = tmp_path / "out"
    proc = run("locate", image, "hawk", "--vs", "owl", *tiny_args(tiny_files), "--out", out, "--json",
               "--save", "heatmap,json", "--heatmap-format", "png16")
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout)
    assert set(record["files"]) == {"heatmap", "json"} and record["files"]["heatmap"].endswith("_heatmap.png")
    assert sorted(p.name for p in out.iterdir()) == sorted(os.path.basename(p) for p in record["files"].values())
    assert Image.open(record["files"]["heatmap"]).size == (60, 45)
    heat = load_heatmap(record["files"]["heatmap"])
    assert heat.shape == (45, 60)
    np.testing.assert_allclose(heat, tiny.locate(str(image), "hawk", vs=["owl"]).heatmap, atol=1e-3)


def test_bad_save_list_fails_before_loading_the_model(image, tmp_path):
    from test_inputs import cli

    res = cli(["locate", image, "hawk", "--vs", "owl", "--save", "overlay,pdf", "--model", "no-such-model",
               "--out", tmp_path])
    assert res.code == 2 and len(res.err) == 1 and "--save" in res.err[0] and "pdf" in res.err[0], res.err
    assert not list(tmp_path.iterdir())


def test_empty_maps_have_null_peak_and_box_and_a_hint(tiny_files, image, tmp_path, monkeypatch):
    """The references outscore the concept everywhere (forced: all-zero maps from the engine)."""
    from test_inputs import cli

    from zsfinercam.core import engine

    maps = engine.maps
    monkeypatch.setattr(engine, "maps", lambda *a, **k: tuple(m * 0 for m in maps(*a, **k)))
    res = cli(["locate", image, "hawk", "--vs", "owl", *tiny_args(tiny_files), "--out", tmp_path, "--json"])
    assert res.code == 0, res.err
    record = json.loads(res.out)
    assert record["peak"] is None and record["bbox"] is None
    assert json.loads(open(record["files"]["json"], encoding="utf-8").read())["peak"] is None
    assert len(res.err) == 1 and "hint" in res.err[0] and "--objective mean" in res.err[0]
    terminal = cli(["locate", image, "hawk", "--vs", "owl", *tiny_args(tiny_files), "--out", tmp_path])
    assert "peak - bbox -" in terminal.out


def test_models_lists_the_embedded_model():
    proc = run("models", "toy")
    assert proc.returncode == 0 and proc.stdout.splitlines()[1].split()[0] == "toy"


@pytest.fixture(scope="module")
def not_an_image(tmp_path_factory):
    path = tmp_path_factory.mktemp("bad") / "notes.jpg"
    path.write_bytes(b"this is not a jpeg")
    return path


BAD = [
    # (arguments after IMAGE, exit code, fragment of the message, also in a real process)
    (["hawk", "--alpha", "nan"], 2, "--alpha", False),
    (["hawk", "--alpha", "-1"], 2, "--alpha", False),
    (["   "], 2, "empty or blank", False),
    (["hawk", "--image-size", "30"], 2, "multiple of the patch size", False),
    (["hawk", "--vocab", "no_such_vocab"], 2, "no_such_vocab", False),
    (["hawk"], 2, "nothing to contrast with", False),
    (["hawk", "--model", "ViT-B-32", "--pretrained", "openai", "--model-config", ""], 1, "not in the local cache",
     True),
]


@pytest.mark.parametrize("extra, code, fragment, real", BAD)
def test_bad_input_one_line_no_traceback(tiny_files, image, tmp_path, extra, code, fragment, real):
    """In this process (see test_inputs.cli); the last row also through a real subprocess."""
    from test_inputs import cli

    before = hashlib.sha1(image.read_bytes()).hexdigest()
    args = tiny_args(tiny_files)
    if "--model" in extra:
        args = ["--device", "cpu"]
        extra = [e for e in extra if e not in ("--model-config", "")]
    argv = ["locate", image, *extra, *args, "--out", tmp_path / "o"]
    inproc = cli(argv)
    assert inproc.code == code and len(inproc.err) == 1 and fragment in inproc.err[0], inproc.err
    if real:
        proc = run(*argv)
        assert proc.returncode == code, proc.stderr
        lines = without_notes([ln for ln in proc.stderr.splitlines() if ln.strip()])
        assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert lines == inproc.err
    assert hashlib.sha1(image.read_bytes()).hexdigest() == before


@pytest.mark.parametrize("which, code, fragment", [
    ("missing", 2, "does not exist"), ("folder", 2, "is a directory"), ("garbage", 1, "not an image")])
def test_bad_image_files(tiny_files, not_an_image, tmp_path, which, code, fragment):
    from test_inputs import cli

    path = {"missing": tmp_path / "nope.png", "folder": tmp_path, "garbage": not_an_image}[which]
    argv = ["locate", path, "hawk", "--vs", "owl", *tiny_args(tiny_files), "--out", tmp_path / "o"]
    inproc = cli(argv)
    assert inproc.code == code and len(inproc.err) == 1 and fragment in inproc.err[0], inproc.err
    if which == "garbage":
        proc = run(*argv)
        assert proc.returncode == code, proc.stderr
        assert len(without_notes(proc.stderr.strip().splitlines())) == 1 and fragment in proc.stderr, proc.stderr


def test_batch_help_lists_its_options():
    from test_inputs import cli

    res = cli(["batch", "--help"])
    assert res.code == 0 and not res.err
    for flag in ("--concepts", "--out", "--resume", "--recursive", "--batch-size", "--max-pixels", "--vs", "--alpha",
                 "--model", "--image-size", "--engine", "--ray-address", "--workers", "--gpus-per-worker",
                 "--cpus-per-worker"):
        assert flag in res.out


def test_the_command_exits_early_but_loses_nothing(tiny_files, image, tmp_path):
    """`main()` as the command skips the interpreter's teardown: stdout redirected to a file is
    complete and synced, the files are whole, atexit handlers still run, the exit code is kept."""
    stdout, marker = tmp_path / "stdout.jsonl", tmp_path / "atexit-ran"
    script = ("import atexit, sys; from zsfinercam.cli import main; "
              f"atexit.register(lambda: open({str(marker)!r}, 'w').write('ran')); main()")
    args = ["locate", image, "hawk", "barn owl", "--vs", "owl", *tiny_args(tiny_files), "--out", tmp_path / "o", "--json"]
    with open(stdout, "w", encoding="utf-8") as out:
        proc = subprocess.run([sys.executable, "-c", script, *map(str, args)], stdout=out, stderr=subprocess.PIPE,
                              text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in stdout.read_text(encoding="utf-8").splitlines()]
    assert [r["concept"] for r in records] == ["hawk", "barn owl"] and marker.read_text() == "ran"
    for r in records:
        assert json.loads(open(r["files"]["json"], encoding="utf-8").read())["concept"] == r["concept"]
        assert np.load(r["files"]["heatmap"]).shape == (45, 60)
    bad = subprocess.run([sys.executable, "-c", script, "locate", str(tmp_path / "nope.png"), "hawk"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "does not exist" in bad.stderr


@pytest.mark.parametrize("base", ["hirescam", "layercam"])
def test_locate_base_round_trip(tiny, tiny_files, image, tmp_path, base):
    """--base reaches the maps (the Python API's for that base) and is recorded in the JSON."""
    proc = run("locate", image, "red hawk", "--vs", "barn owl", "--base", base, *tiny_args(tiny_files),
               "--out", tmp_path, "--json")
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout)
    assert record["base"] == base and json.loads(open(record["files"]["json"]).read())["base"] == base
    want = tiny.locate(str(image), "red hawk", vs=["barn owl"], base=base)
    assert want.base == base and f"base {base}" in repr(want)
    np.testing.assert_allclose(np.load(record["files"]["heatmap"]), want.heatmap, atol=1e-5)
    other = tiny.locate(str(image), "red hawk", vs=["barn owl"], base="gradcam")
    assert not np.allclose(other.heatmap, want.heatmap, atol=1e-2), "the base must change the map"
    assert "base gradcam" in repr(other) and f"-{base}-" in Path(record["files"]["json"]).name


def test_a_bad_base_is_one_line(tiny_files, image, tmp_path):
    proc = run("locate", image, "hawk", "--base", "scorecam", *tiny_args(tiny_files), "--out", tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "--base" in proc.stderr and "hirescam" in proc.stderr


def test_batch_records_the_base_in_run_json(tiny_files, image, tmp_path):
    out = tmp_path / "out"
    proc = run("batch", image, "--concepts", "hawk", "--vs", "owl", "--base", "layercam", *tiny_args(tiny_files),
               "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((out / "run.json").read_text())["locate"]["base"] == "layercam"
    (record,) = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    maps = [json.loads((out / o["files"]["json"]).read_text()) for o in record["outputs"]]
    assert [m["base"] for m in maps] == ["layercam"]
