"""Ground truth: on synthetic birds with one-part references, Finer-CAM beats its CAM base alone."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

import zsfinercam as zf
from zsfinercam.backends.open_clip_weights import TOY_DIR
from zsfinercam.errors import UsageError
from zsfinercam.evaluation.evaluate import evaluate, read_manifest, synthetic_items, write_manifest


@pytest.fixture(scope="module")
def items():
    return synthetic_items(30, seed=2024, split="all", size=64)


def toy_at_scale(folder, scale):
    """A copy of the shipped checkpoint with its logit scale set (the weights are otherwise the same)."""
    from safetensors.torch import load_file, save_file

    state = load_file(str(TOY_DIR / "toy.safetensors"))
    state["logit_scale"].fill_(math.log(scale))
    save_file(state, str(folder / "toy100.safetensors"))
    return zf.Localizer.from_pretrained("toy", str(folder / "toy100.safetensors"),
                                       model_config=str(TOY_DIR / "config.json"), device="cpu", cache_dir=None)


@pytest.mark.parametrize("scale", [None, 100.0])
def test_finer_cam_finds_the_distinguishing_part_better_than_the_base_alone(items, scale, tmp_path):
    loc = zf.Localizer.from_pretrained("toy", device="cpu", cache_dir=None) if scale is None \
        else toy_at_scale(tmp_path, scale)
    if scale is not None:
        assert loc.backend.logit_scale == pytest.approx(scale, rel=1e-4)
    summary = evaluate(loc, items, ("finer", "base", "random"), progress=False).summary()
    finer, alone, rand = summary["finer"], summary["base"], summary["random"]
    assert finer["pointing"] > alone["pointing"] + 0.1 and finer["energy"] > alone["energy"] + 0.03
    assert finer["pointing"] > rand["pointing"] and finer["energy"] > rand["energy"]


def test_randomized_weights_collapse_the_map(items):
    loc = zf.Localizer.from_pretrained("toy", device="cpu", cache_dir=None)
    summary = evaluate(loc, items[:18], ("finer", "randomized"), progress=False).summary()
    assert summary["randomized"]["energy"] < summary["finer"]["energy"] / 2


def test_synthetic_references_differ_in_exactly_one_part(items):
    from zsfinercam.synthetic import PART_VALUES, differing_parts

    for item in items:
        part = item.label.split(":")[1]
        assert len(item.references) == len(PART_VALUES[part]) - 1
        assert all(differing_parts(item.concept, r) == [part] for r in item.references)
        assert item.mask.any()


def test_manifest_round_trip_through_the_cli(tmp_path):
    def run(*args):
        proc = subprocess.run([sys.executable, "-m", "zsfinercam", "eval", *map(str, args), "--methods",
                               "finer,base", "--device", "cpu"], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        return proc

    first = run("--synthetic", 6, "--write-manifest", tmp_path / "set", "--report", tmp_path / "a.json")
    # the old `--json FILE` still writes FILE, with a deprecation warning
    second = run(tmp_path / "set" / "manifest.jsonl", "--json", tmp_path / "b.json")
    assert "--json FILE is now --report FILE" in second.stderr
    assert first.stdout == second.stdout and first.stdout.splitlines()[0].split()[:3] == ["method", "n", "pointing"]
    a, b = (json.loads((tmp_path / f).read_text()) for f in ("a.json", "b.json"))
    assert a["summary"] == b["summary"]
    printed = run(tmp_path / "set" / "manifest.jsonl", "--json")  # --json alone: JSON on stdout, as in every verb
    assert json.loads(printed.stdout)["summary"] == a["summary"]


@pytest.mark.parametrize("line, message", [
    ("not json", "manifest.jsonl:2: not JSON"),
    ('{"image": "x.png"}', "manifest.jsonl:2: expected an object"),
    ('{"image": "x.png", "concept": "c", "mask": "missing.png"}', "manifest.jsonl:2: mask not found"),
])
def test_bad_manifest_lines_are_named(tmp_path, line, message):
    path = tmp_path / "manifest.jsonl"
    path.write_text('{"image": "a.png", "concept": "c"}\n' + line + "\n")
    with pytest.raises(UsageError, match=message):
        read_manifest(path)


def test_several_bases_give_one_row_each(items):
    from zsfinercam.options import DEFAULT_BASE

    loc = zf.Localizer.from_pretrained("toy", device="cpu", cache_dir=None)
    few = items[:6]
    report = evaluate(loc, few, ("finer", "base", "random"), bases=["gradcam", "hirescam", "layercam"],
                      progress=False)
    summary = report.summary()
    assert list(summary) == ["finer/gradcam", "finer/hirescam", "finer/layercam",
                             "base/gradcam", "base/hirescam", "base/layercam", "random"]
    assert all(s["n"] == 6 for s in summary.values())
    assert {r["base"] for r in report.rows if r["method"] != "random"} == {"gradcam", "hirescam", "layercam"}
    assert [line.split()[0] for line in report.table().splitlines()] == ["method", *summary]
    plain = evaluate(loc, few, ("finer", "base"), progress=False)  # no bases: the default, named by method
    assert list(plain.summary()) == ["finer", "base"] and all(r["base"] == DEFAULT_BASE for r in plain.rows)
    assert plain.table().splitlines()[-1] == f"CAM base: {DEFAULT_BASE}"  # which base rows named by method use
    for method in ("finer", "base"):
        assert plain.summary()[method] == summary[f"{method}/{DEFAULT_BASE}"]
    with pytest.raises(UsageError, match="unknown base 'scorecam'"):
        evaluate(loc, few, ("finer",), bases=["scorecam"], progress=False)


def test_logit_scale_changes_only_the_heads_scale(items, tmp_path):
    from zsfinercam.evaluation.evaluate import with_logit_scale

    loc = zf.Localizer.from_pretrained("toy", device="cpu", cache_dir=None)
    own = loc.backend.logit_scale
    at_100 = with_logit_scale(loc, 100.0)
    assert at_100.backend.logit_scale == 100.0 and loc.backend.logit_scale == own  # the original is untouched
    args = (items[:6], ("finer", "base"))
    want = evaluate(toy_at_scale(tmp_path, 100.0), *args, bases=["gradcam", "hirescam"], progress=False).summary()
    got = evaluate(at_100, *args, bases=["gradcam", "hirescam"], progress=False).summary()
    assert got.keys() == want.keys()
    for method in want:
        assert got[method] == pytest.approx(want[method], abs=1e-6)
    with pytest.raises(UsageError, match="positive"):
        with_logit_scale(loc, 0.0)


def test_eval_cli_compares_bases(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "zsfinercam", "eval", "--synthetic", "3", "--methods", "finer,base",
                           "--base", "hirescam,layercam", "--logit-scale", "100", "--device", "cpu",
                           "--json", str(tmp_path / "r.json")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    labels = ["finer/hirescam", "finer/layercam", "base/hirescam", "base/layercam"]
    assert [line.split()[0] for line in proc.stdout.splitlines()[1:]] == labels
    assert list(json.loads((tmp_path / "r.json").read_text())["summary"]) == labels
    bad = subprocess.run([sys.executable, "-m", "zsfinercam", "eval", "--synthetic", "3", "--base", "gradcam,nope"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "--base" in bad.stderr
    assert "unknown base 'nope'" in bad.stderr and len(bad.stderr.splitlines()) == 1
    old = subprocess.run([sys.executable, "-m", "zsfinercam", "eval", "--synthetic", "3", "--methods", "gradcam"],
                         capture_output=True, text=True, timeout=300)
    assert old.returncode == 2 and "--methods" in old.stderr and "finer, base, random, randomized" in old.stderr


def test_the_report_never_replaces_the_manifest(tmp_path):
    folder = tmp_path / "set"
    manifest = write_manifest(synthetic_items(2), folder)
    before = manifest.read_bytes()
    proc = subprocess.run([sys.executable, "-m", "zsfinercam", "eval", str(manifest), "--methods", "random",
                           "--report", str(manifest)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "would overwrite" in proc.stderr and len(proc.stderr.splitlines()) == 1
    assert manifest.read_bytes() == before
