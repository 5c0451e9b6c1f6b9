"""`zsfinercam batch`: folders in, maps and a manifest out; failures recorded; kill and resume."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import random_image
from test_inputs import cli, without_notes
from zsfinercam import UsageError
from zsfinercam.batch.run import MANIFEST_NAME, _lock, find_images, run_batch
from zsfinercam.io.files import TMP_PREFIX

CONCEPTS = ["-c", "red hawk", "-c", "barn owl"]

# Runs the CLI and SIGKILLs itself just before the Nth heatmap file is renamed into place:
# the manifest holds the records written so far and a temporary file is left behind.
KILLER = """
import os, signal, sys
limit, seen, real = int(os.environ["KILL_AT_HEATMAP"]), [0], os.replace
def replace(src, dst, *a, **k):
    if str(dst).endswith("_heatmap.npy"):
        seen[0] += 1
        if seen[0] == limit:
            os.kill(os.getpid(), signal.SIGKILL)
    return real(src, dst, *a, **k)
os.replace = replace
from zsfinercam.cli import main
main(sys.argv[1:])
"""


def model_args(tiny_files) -> list:
    cfg, weights = tiny_files
    return ["--model", "tiny", "--model-config", cfg, "--pretrained", weights, "--device", "cpu"]


def python(*args, env=None):
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})


def records(out) -> list[dict]:
    return [json.loads(line) for line in (out / MANIFEST_NAME).read_text(encoding="utf-8").splitlines()]


def leftovers(out) -> list:
    return sorted(out.rglob(f"{TMP_PREFIX}*"))


def digests(folder) -> dict:
    return {p: hashlib.sha1(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture
def photos(tmp_path):
    """a.png, b.png, bad.png (corrupt), c.jpg, sub/a.png (same name), notes.txt, .hidden.png."""
    root = tmp_path / "photos"
    (root / "sub").mkdir(parents=True)
    for i, name in enumerate(["a.png", "b.png", "c.jpg", "sub/a.png", ".hidden.png"]):
        Image.fromarray(random_image(i, 30 + 5 * i, 40)).save(root / name)
    (root / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (root / "notes.txt").write_text("not an image")
    return root


def test_batch_records_a_bad_file_and_goes_on(tiny_files, photos):
    """Real process; --out inside the input folder; a corrupt file in a chunk of two."""
    out = photos / "out"
    before = digests(photos)
    proc = python("-m", "zsfinercam", "batch", photos, "--recursive", *CONCEPTS, "--out", out, "--batch-size", 2,
                  *model_args(tiny_files))
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout.startswith("batch: 4 ok, 1 failed, 0 skipped in ")
    lines = without_notes(proc.stderr.strip().splitlines())
    assert "Traceback" not in proc.stderr and len(lines) == 2, proc.stderr
    assert "bad.png" in lines[0] and lines[0].startswith("zsfinercam: warning:")
    assert lines[1].startswith("zsfinercam: error: 1 of 5 images failed")
    recs = records(out)
    assert [os.path.relpath(r["input"], photos) for r in recs] == ["a.png", "b.png", "bad.png", "c.jpg", "sub/a.png"]
    assert [r["status"] for r in recs] == ["ok", "ok", "error", "ok", "ok"]
    assert "bad.png" in recs[2]["error"] and recs[2]["outputs"] == []
    folders = {r["input"]: {os.path.dirname(f) for o in r["outputs"] for f in o["files"].values()} for r in recs}
    assert folders[str(photos / "a.png")].isdisjoint(folders[str(photos / "sub/a.png")])  # no collision
    for r in (r for r in recs if r["status"] == "ok"):
        assert [o["concept"] for o in r["outputs"]] == ["red hawk", "barn owl"]
        assert r["image_size"] == list(Image.open(r["input"]).size)
        for o in r["outputs"]:
            assert set(o) >= {"references", "scores", "peak", "bbox", "files"} and o["references"]
            assert np.load(out / o["files"]["heatmap"]).shape == tuple(r["image_size"][::-1])
    assert {p: d for p, d in digests(photos).items() if out not in p.parents} == before
    assert not leftovers(out)

    again = cli(["batch", photos, "-r", *CONCEPTS, "--out", out, *model_args(tiny_files)])
    assert again.code == 2 and len(again.err) == 1 and "pass --resume" in again.err[0]
    other = cli(["batch", photos, "-r", "-c", "eagle", "-c", "owl", "--out", out, "--resume", *model_args(tiny_files)])
    assert other.code == 2 and len(other.err) == 1 and "other concepts" in other.err[0]
    resumed = cli(["batch", photos, "-r", *CONCEPTS, "--out", out, "--resume", *model_args(tiny_files)])
    assert resumed.code == 1 and resumed.out.startswith("batch: 0 ok, 1 failed, 4 skipped")
    assert [r["input"] for r in records(out)[5:]] == [str(photos / "bad.png")]  # outputs not taken as inputs


def test_kill_and_resume_equals_an_uninterrupted_run(tiny_files, tmp_path):
    """SIGKILL mid-chunk while a file is half written, plus a torn manifest line; --resume
    then gives the same manifest and the same bytes as a run that was never interrupted."""
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(6):
        Image.fromarray(random_image(10 + i, 24 + 3 * i, 33)).save(folder / f"img{i}.png")
    args = ["batch", folder, *CONCEPTS, "--batch-size", 2, *model_args(tiny_files)]
    killed, reference = tmp_path / "killed", tmp_path / "reference"

    proc = python("-c", KILLER, *args, "--out", killed, env={"KILL_AT_HEATMAP": "7"})  # inside image 4 of 6
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert len(records(killed)) == 3 and leftovers(killed)
    with open(killed / MANIFEST_NAME, "ab") as f:
        f.write(b'{"input": "' + str(folder).encode() + b'/img3.png", "sta')  # a write torn by the kill

    resumed = cli([*args, "--out", killed, "--resume"])
    assert resumed.code == 0 and resumed.out.startswith("batch: 3 ok, 0 failed, 3 skipped"), resumed.err
    full = cli([*args, "--out", reference])
    assert full.code == 0 and full.out.startswith("batch: 6 ok, 0 failed, 0 skipped"), full.err

    assert (killed / MANIFEST_NAME).read_bytes() == (reference / MANIFEST_NAME).read_bytes()
    assert not leftovers(killed)
    for record in records(reference):
        for o in record["outputs"]:
            for kind in ("heatmap", "overlay"):
                assert (killed / o["files"][kind]).read_bytes() == (reference / o["files"][kind]).read_bytes()


@pytest.mark.filterwarnings("ignore:.*bad.png")
def test_two_runs_are_identical(tiny, tmp_path, photos):
    images = find_images([photos])
    runs = [run_batch(tiny, images, tmp_path / name, ["red hawk", "barn owl"], batch_size=3, progress=False)
            for name in ("one", "two")]
    assert [(s.ok, s.failed) for s in runs] == [(3, 1), (3, 1)]
    one, two = tmp_path / "one", tmp_path / "two"
    assert (one / MANIFEST_NAME).read_bytes() == (two / MANIFEST_NAME).read_bytes()
    npy = sorted(p.relative_to(one) for p in one.rglob("*.npy"))
    assert len(npy) == 6 and all((one / p).read_bytes() == (two / p).read_bytes() for p in npy)


@pytest.mark.filterwarnings("ignore:.*bad.png")
def test_a_failing_chunk_is_recorded_and_the_run_goes_on(tiny, tmp_path, photos, monkeypatch):
    real, calls = tiny.locate_many, []

    def flaky(images, *a, **k):
        calls.append(len(images))
        if len(calls) == 1:
            raise RuntimeError("out of memory")
        return real(images, *a, **k)
    monkeypatch.setattr(tiny, "locate_many", flaky)
    with pytest.warns(UserWarning, match="mapping failed"):
        summary = run_batch(tiny, find_images([photos]), tmp_path / "o", ["hawk", "owl"], batch_size=2,
                            progress=False)
    assert (summary.ok, summary.failed) == (1, 3) and calls == [2, 1]
    assert [r["status"] for r in records(tmp_path / "o")] == ["error", "error", "error", "ok"]


def test_find_images(photos, tmp_path):
    top = find_images([photos])
    assert [p.name for p in top] == ["a.png", "b.png", "bad.png", "c.jpg"]  # sorted, no txt, no hidden, no sub
    deep = find_images([photos, photos / "a.png", f"{photos}/*.png"], recursive=True)
    assert [p.relative_to(photos).as_posix() for p in deep] == ["a.png", "b.png", "bad.png", "c.jpg", "sub/a.png"]
    assert find_images([f"{photos}/**/a.png"]) == [photos / "a.png", photos / "sub/a.png"]
    assert find_images([photos / "notes.txt"]) == [photos / "notes.txt"]  # named files are taken as they are
    assert find_images([photos], recursive=True, exclude=photos / "sub")[-1].name == "c.jpg"
    assert find_images([photos / "sub"], exclude=photos) == [photos / "sub/a.png"]  # named inside --out: read
    for bad, exclude, fragment in [([tmp_path / "nope"], None, "not found"),
                                   ([f"{photos}/*.bmp"], None, "no files match"),
                                   ([photos], photos, "input folder itself")]:
        with pytest.raises(UsageError, match=fragment):
            find_images(bad, exclude=exclude)


def test_one_run_per_folder(tmp_path):
    first = _lock(tmp_path)
    try:
        with pytest.raises(UsageError, match="another zsfinercam batch"):
            _lock(tmp_path)
    finally:
        if first is not None:
            first.close()
    _lock(tmp_path).close()


def _odd_name(folder) -> str:
    """A PNG named with the bytes b'caf\\xe9.png' (Latin-1, not UTF-8); Python sees 'caf\\udce9.png'."""
    import io

    buf = io.BytesIO()
    Image.fromarray(random_image(7, 30, 40)).save(buf, format="PNG")
    try:
        with open(os.fsencode(folder) + b"/caf\xe9.png", "wb") as f:
            f.write(buf.getvalue())
    except (OSError, UnicodeError):
        pytest.skip("this file system refuses file names that are not UTF-8")
    return os.fsdecode(os.fsencode(folder) + b"/caf\xe9.png")


def test_a_file_name_that_is_not_utf8_is_mapped(tiny_files, tmp_path):
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    odd = _odd_name(folder)
    Image.fromarray(random_image(8, 30, 40)).save(folder / "ok.png")
    run = cli(["batch", folder, *CONCEPTS, "--out", out, *model_args(tiny_files)])
    assert run.code == 0 and run.out.startswith("batch: 2 ok, 0 failed"), run.err
    recs = records(out)  # the manifest is valid UTF-8 and gives the name back exactly
    assert [r["input"] for r in recs] == [odd, str(folder / "ok.png")] and recs[0]["status"] == "ok"
    saved = json.loads((out / recs[0]["outputs"][0]["files"]["json"]).read_bytes().decode("utf-8"))
    assert saved["source"] == odd
    resumed = cli(["batch", folder, *CONCEPTS, "--out", out, "--resume", *model_args(tiny_files)])
    assert resumed.code == 0 and resumed.out.startswith("batch: 0 ok, 0 failed, 2 skipped"), resumed.err

    located = cli(["locate", odd, "red hawk", "--vs", "barn owl", "--out", tmp_path / "one", *model_args(tiny_files)])
    assert located.code == 0, located.err
    (record,) = [json.loads(p.read_bytes().decode("utf-8")) for p in (tmp_path / "one").glob("*.json")]
    assert record["source"] == odd and record["concept"] == "red hawk"


def test_a_failed_save_is_recorded_and_the_run_goes_on(tiny, tmp_path, photos, monkeypatch):
    from zsfinercam.result import LocateResult

    real = LocateResult.save

    def save(self, directory, stem=None):
        if self.source.endswith("b.png"):
            raise OSError(28, "No space left on device")
        return real(self, directory, stem)
    monkeypatch.setattr(LocateResult, "save", save)
    images = [photos / "a.png", photos / "b.png", photos / "c.jpg"]
    with pytest.warns(UserWarning, match="b.png: could not save the maps .*No space left"):
        summary = run_batch(tiny, images, tmp_path / "o", ["hawk", "owl"], batch_size=3, progress=False)
    assert (summary.ok, summary.failed) == (2, 1)
    assert [r["status"] for r in records(tmp_path / "o")] == ["ok", "error", "ok"]


def test_a_named_folder_inside_out_is_read_but_outputs_never(tiny, tmp_path):
    out = tmp_path / "out"
    (out / "inputs" / "deeper").mkdir(parents=True)
    for i, name in enumerate(["inputs/a.png", "inputs/deeper/b.png", "../top.png"]):
        Image.fromarray(random_image(20 + i, 30, 40)).save(out / name)
    named = find_images([out / "inputs"], recursive=True, exclude=out)  # named by the user: read
    assert [p.relative_to(out).as_posix() for p in named] == ["inputs/a.png", "inputs/deeper/b.png"]
    run_batch(tiny, named, out, ["red hawk", "barn owl"], progress=False)
    written = sorted(out.glob("*/*_overlay.png"))
    assert len(written) == 4 and not written[0].is_relative_to(out / "inputs")
    assert find_images([out / "inputs"], recursive=True, exclude=out) == named  # outputs are not inputs
    with pytest.raises(UsageError, match="no images found"):  # a folder batch wrote: never read
        find_images([written[0].parent], exclude=out)
    assert find_images([f"{out}/*/*.png", f"{out}/*"], recursive=True, exclude=out) == named  # patterns too
    assert find_images([tmp_path], recursive=True, exclude=out) == [tmp_path / "top.png"]  # walking skips out
    with pytest.raises(UsageError, match="input folder itself"):
        find_images([out], exclude=out)
