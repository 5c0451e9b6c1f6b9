"""The command line answers at once where no model is needed, checks before it loads one,
says what it is doing, and names its files by their settings."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from conftest import random_image
from test_inputs import cli
from zsfinercam.cli import VERBS

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "numpy", "PIL", "cv2", "open_clip", "huggingface_hub", "transformers")

# Runs `zsfinercam ARGS` in a fresh interpreter, then reports the heavy modules it imported.
PROBE = r"""
import json, sys
from zsfinercam.cli import main
code = 0
try:
    main(sys.argv[1:])
except SystemExit as done:
    code = done.code or 0
print(json.dumps({"code": code, "heavy": [m for m in HEAVY if m in sys.modules]}), file=sys.stderr)
"""


def probe(*args, env=None) -> dict:
    """Exit code, heavy modules imported and stderr lines of `zsfinercam ARGS` in a subprocess."""
    code = f"HEAVY = {HEAVY!r}\n{PROBE}"
    proc = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, timeout=120,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})
    *lines, last = proc.stderr.strip().splitlines()
    return {**json.loads(last), "err": lines, "out": proc.stdout}


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("img") / "bird.png"
    Image.fromarray(random_image(3, 40, 52)).save(path)
    return path


@pytest.fixture(scope="module")
def old_run(tmp_path_factory) -> Path:
    """A folder that holds a batch run."""
    out = tmp_path_factory.mktemp("run")
    (out / "manifest.jsonl").write_text('{"input": "x.png"}\n')
    return out


NO_MODEL = [  # (arguments, exit code, fragment of the one stderr line or of stdout)
    (["--help"], 0, "locate"),
    (["--version"], 0, "zsfinercam"),
    *[([verb, "--help"], 0, "--help") for verb in VERBS],
    (["prompts"], 0, "cub200"),
    (["models", "toy"], 0, "toy"),
    (["models", "--backend", "hf"], 0, "model"),
    (["locate", "no-such-image.png", "bird"], 2, "does not exist"),
    (["locate", "{image}"], 2, "no concepts given"),
    (["locate", "{image}", "bird", "--vocab", "no_such_vocab"], 2, "no_such_vocab"),
    (["locate", "{image}", "bird", "--templates", "no_such_templates"], 2, "no_such_templates"),
    (["locate", "{image}", "bird", "--parts", "--part-vocab", "no_such_parts"], 2, "no_such_parts"),
    (["locate", "{image}", "bird", "--vs", "owl", "--contrast", "text"], 2, "conflicts with vs"),
    (["locate", "{image}", "bird", "--contrast", "generic"], 2, "--category"),
    (["locate", "{image}", "bird", "--save", "pdf"], 2, "--save"),
    (["locate", "{image}", "bird", "--vs", "owl", "--out", "{image}"], 2, "is a file"),
    (["compare", "{image}", "a", "b", "--vocab", "no_such_vocab"], 2, "no_such_vocab"),
    (["batch", "{image}", "--concepts", "bird", "--out", "{old_run}"], 2, "pass --resume"),
    (["batch", "{image}", "--concepts", "bird", "--vocab", "no_such_vocab", "--out", "{old_run}2"], 2, "no_such_vocab"),
    (["batch", "no-such-folder/*.png", "--concepts", "bird", "--out", "{old_run}3"], 2, "no files match"),
    (["neighbors", "bird", "--vocab", "no_such_vocab"], 2, "no_such_vocab"),
    (["eval", "--synthetic", "2", "--methods", "finest"], 2, "--methods"),
]


@pytest.mark.parametrize("args, code, fragment", NO_MODEL, ids=[" ".join(r[0]) for r in NO_MODEL])
def test_commands_that_need_no_model_never_import_torch(image, old_run, args, code, fragment):
    """Help, version, listings and every mistake that needs no model: no torch (nor numpy, PIL,
    open_clip), so no model was loaded; a mistake is one stderr line."""
    got = probe(*(a.format(image=image, old_run=old_run) for a in args))
    assert got["code"] == code and got["heavy"] == [], got
    if code:
        (line,) = got["err"]
        assert line.startswith("zsfinercam: error:") and fragment in line, got
    else:
        assert fragment in got["out"], got


def test_models_lists_timm_towers_and_what_needs_a_download():
    import open_clip

    got = probe("models", "ViT-B-16-SigLIP*")
    rows = [line.split() for line in got["out"].splitlines()[1:]]
    assert ["ViT-B-16-SigLIP", "webli"] in [r[:2] for r in rows]
    assert all(r[2] == "yes" or " ".join(r[2:7]) == "no: downloads on first use" for r in rows)
    listed = {(r[0], r[1]) for r in rows}
    assert listed <= set(open_clip.list_pretrained())  # read from open_clip's files, not guessed
    plain = probe("models", "ViT-B-16")
    assert {tuple(r.split()[:2]) for r in plain["out"].splitlines()[1:]} == \
        {(n, t) for n, t in open_clip.list_pretrained() if n == "ViT-B-16"}


def test_models_backend_hf_lists_the_clip_and_siglip_repos_in_the_hub_cache(tmp_path):
    for repo, kind in (("google--siglip-base-patch16-224", "siglip"), ("openai--clip-vit-base-patch16", "clip"),
                       ("bert--base", "bert")):
        snapshot = tmp_path / f"models--{repo}" / "snapshots" / "abc123"
        snapshot.mkdir(parents=True)
        (snapshot / "config.json").write_text(json.dumps({"model_type": kind}))
    got = probe("models", "--backend", "hf", env={"HF_HUB_CACHE": str(tmp_path)})
    names = [line.split()[0] for line in got["out"].splitlines()[1:]]
    assert got["code"] == 0 and names == ["google/siglip-base-patch16-224", "openai/clip-vit-base-patch16"], got
    assert got["heavy"] == []


def tiny_args(tiny_files) -> list:
    cfg, weights = tiny_files
    return ["--model", "tiny", "--model-config", cfg, "--pretrained", weights, "--device", "cpu"]


def test_quiet_silences_the_notes_and_threads_reach_torch(tiny_files, image, tmp_path, monkeypatch):
    import torch

    monkeypatch.setenv("ZSFINERCAM_CACHE", str(tmp_path / "cache"))  # nothing cached: the prompts are encoded
    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    args = ["locate", image, "bird", "--vocab", "cub200", "--contrast", "text", *tiny_args(tiny_files),
            "--out", tmp_path]
    talk = cli([*args, "--threads", "3"])
    assert talk.code == 0 and calls == [3], talk.err
    assert [n.split(" ")[1] for n in talk.notes] == ["loading", "encoding"], talk.notes
    assert talk.notes[0].startswith("zsfinercam: loading tiny (") and "on cpu ..." in talk.notes[0]
    assert "prompts (201 concepts x " in talk.notes[1]
    monkeypatch.setenv("ZSFINERCAM_CACHE", str(tmp_path / "cache2"))
    quiet = cli([*args, "--quiet"])
    # the notes go; warnings (the tiny text tower truncates two names) stay
    assert quiet.code == 0 and quiet.out == talk.out and quiet.notes == [] and quiet.err == talk.err
    assert calls == [3]  # no --threads: torch's own default


def json_stems(out: str) -> list[str]:
    return [Path(json.loads(line)["files"]["json"]).stem for line in out.splitlines()]


def test_other_settings_get_other_names_and_a_rerun_the_same(tiny_files, image, tmp_path):
    base = ["locate", image, "bird", "--vs", "owl", *tiny_args(tiny_files), "--out", tmp_path, "--json"]
    variants = [[], ["--alpha", "0.5"], ["--objective", "mean"], ["--vs", "eagle"], ["--method", "base"],
                ["--templates", "single"], ["--base", "layercam"], ["--method", "base", "--base", "gradcam"]]
    stems = []
    for extra in variants:
        run = cli([*base, *extra])
        assert run.code == 0, run.err
        stems += json_stems(run.out)
    assert len(set(stems)) == len(variants)
    assert all(s.startswith(stems[0].split("_")[0] + "_bird-") for s in stems)  # the image, then the concept
    assert "_finer-weighted-a0.5-hirescam-" in stems[1] and "_finer-mean-a0.6-hirescam-" in stems[2]
    assert "_bird-" in stems[4] and stems[4].split("_")[2].startswith("hirescam-")  # the base alone: named by it
    assert "_finer-weighted-a1-layercam-" in stems[6] and stems[7].split("_")[2].startswith("gradcam-")
    files = sorted(p.name for p in tmp_path.iterdir())
    again = cli([*base, "--alpha", "0.5"])
    assert json_stems(again.out) == [stems[1]] and sorted(p.name for p in tmp_path.iterdir()) == files
    saved = json.loads((tmp_path / f"{stems[1]}.json").read_text(encoding="utf-8"))
    assert saved["files"] == {k: f"{stems[1]}{s}" for k, s in
                              (("overlay", "_overlay.png"), ("heatmap", "_heatmap.npy"), ("json", ".json"))}


def test_compare_grids_are_named_by_their_settings(tiny_files, image, tmp_path):
    base = ["compare", image, "bird", "owl", *tiny_args(tiny_files), "--cell", "32", "--out", tmp_path, "--json"]
    first, other, again = cli(base), cli([*base, "--alpha", "0.5"]), cli(base)
    names = [Path(json.loads(r.out)["files"]["grid"]).name for r in (first, other, again)]
    assert names[0] != names[1] and names[0] == names[2] and "_compare-bird-owl-" in names[0], names
    assert len([p for p in tmp_path.iterdir() if p.suffix in (".png", ".json")]) == 4


def test_save_without_a_stem_names_the_image_and_the_settings(tiny, image, tmp_path):
    from zsfinercam.io.files import image_stem

    plain, half = (tiny.locate(str(image), "bird", vs=["owl"], alpha=a) for a in (1.0, 0.5))
    a, b = plain.save(tmp_path), half.save(tmp_path)
    assert Path(a["json"]).name.startswith(image_stem(image) + "_bird-") and a["json"] != b["json"]
    assert plain.save(tmp_path) == a


# Counts the image-tower passes of an --interactive session fed from a pipe.
INTERACTIVE = r"""
import sys
from zsfinercam.cli import main
from zsfinercam.localizer import Localizer
encode = Localizer.encode_image
passes = []
def counted(self, images):
    passes.append(images)
    return encode(self, images)
Localizer.encode_image = counted
try:
    main(sys.argv[1:])
finally:
    print(f"@passes {len(passes)}", file=sys.stderr)
"""


def test_interactive_reads_concepts_and_settings_from_stdin(tiny_files, image, tmp_path):
    lines = ["bird", "vs: owl; eagle", "bird", "alpha: lots", "contrast: text", "objective: mean", "bird",
             "reset", "vs: owl", "base: hirescam", "bird", "quit", "never mapped"]
    proc = subprocess.run([sys.executable, "-c", INTERACTIVE, "locate", str(image), "--interactive", "--vs", "hawk",
                           *map(str, tiny_args(tiny_files)), "--out", str(tmp_path)], input="\n".join(lines) + "\n",
                          capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "ZSFINERCAM_CACHE": str(tmp_path / "c")})
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.splitlines()
    assert [line.split(":")[0] for line in out] == ["bird"] * 4, proc.stdout
    assert "vs [hawk]" in out[0] and "vs [owl]" in out[3]
    assert "vs [owl, eagle]" in out[1] and "vs [owl, eagle]" in out[2]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("zsfinercam: error:")]
    assert len(errors) == 2 and "alpha" in errors[0] and "conflicts with vs" in errors[1], proc.stderr
    assert "@passes 1" in proc.stderr  # the image tower ran once for the whole session
    written = sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".json")
    assert len(written) == 4 and any("_finer-mean-a0.6-" in n for n in written)
    assert any("-hirescam-" in n for n in written)


def test_interactive_with_nothing_on_stdin_maps_the_given_concepts(tiny_files, image, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "zsfinercam", "locate", str(image), "bird", "-i", "--vs", "owl",
                           "-q", *map(str, tiny_args(tiny_files)), "--out", str(tmp_path)], input="",
                          capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0 and proc.stderr == "" and proc.stdout.startswith("bird: score"), proc.stderr


def test_interactive_keeps_the_given_alpha_across_a_method_change(tiny_files, image, tmp_path):
    """The base alone forces alpha 0; switching back to Finer-CAM restores the alpha the user gave."""
    lines = ["bird", "method: finer", "bird", "alpha: 0.25", "method: base", "method: finer", "bird"]
    proc = subprocess.run([sys.executable, "-m", "zsfinercam", "locate", str(image), "-i", "--vs", "owl", "--json",
                           "--method", "base", "--alpha", "0.5", "-q", *map(str, tiny_args(tiny_files)),
                           "--out", str(tmp_path)], input="\n".join(lines) + "\n", capture_output=True, text=True,
                          timeout=300, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [(r["method"], r["alpha"]) for r in records] == [("base", 0.0), ("finer", 0.5), ("finer", 0.25)]
    assert records[0]["objective"] == "logit" and records[0]["references"] == []
