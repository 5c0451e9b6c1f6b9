"""Every bad input gets one clear answer; odd but valid inputs work (API and CLI).

Tables in supervision's (input, expected, raises) style. CLI rows run `zsfinercam.cli.main`
in-process (a model load costs ~0.1 s there); a representative subset runs as a real
subprocess. Every row checks that the input files are left byte-for-byte unchanged.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import subprocess
import sys
import threading
import warnings
import zlib
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from conftest import random_image
from zsfinercam import Localizer, UsageError, WorkError
from zsfinercam.io.images import DEFAULT_MAX_PIXELS, load_image

H, W = 40, 52  # size of the test images (rot.jpg is stored W x H and shown H x W)


def png_header(w: int, h: int) -> bytes:
    """A PNG that declares w x h pixels and holds none: a decompression bomb's header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) + chunk(b"IEND", b"")


def _make_files(folder, weights) -> dict:
    rgb = Image.fromarray(random_image(0, H, W))
    f = {name: folder / name for name in (
        "ok.png", "empty.png", "trunc.png", "trunc.jpg", "text.jpg", "bomb.png", "cmyk.jpg", "g16.png", "rgba.png",
        "p.png", "ptrans.png", "la.png", "l.png", "bw.png", "rot.jpg", "anim.gif", "anim.webp", "ü ñ 鳥.png",
        "one.png", "trunc.safetensors", "random.pt", "empty.safetensors")}
    f["missing"], f["folder"], f["nope.pt"] = folder / "missing.png", folder / "a folder", folder / "nope.pt"
    f["folder"].mkdir()
    rgb.save(f["ok.png"])
    rgb.save(f["ü ñ 鳥.png"])
    f["empty.png"].write_bytes(b"")
    f["trunc.png"].write_bytes(f["ok.png"].read_bytes()[:400])
    rgb.save(folder / "full.jpg")
    f["trunc.jpg"].write_bytes((folder / "full.jpg").read_bytes()[:600])
    f["text.jpg"].write_bytes(b"this is not a jpeg")
    f["bomb.png"].write_bytes(png_header(30000, 30000))
    rgb.convert("CMYK").save(f["cmyk.jpg"])
    Image.fromarray((random_image(1, H, W)[..., 0].astype(np.uint16) * 257)).save(f["g16.png"])
    for mode in ("rgba", "la", "l", "bw", "p"):
        rgb.convert({"rgba": "RGBA", "la": "LA", "l": "L", "bw": "1", "p": "P"}[mode]).save(f[f"{mode}.png"])
    rgb.convert("P").save(f["ptrans.png"], transparency=0)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees to show upright
    rgb.save(f["rot.jpg"], exif=exif)
    frames = [rgb, Image.fromarray(255 - random_image(0, H, W))]
    frames[0].save(f["anim.gif"], save_all=True, append_images=frames[1:], duration=100, loop=0)
    frames[0].save(f["anim.webp"], save_all=True, append_images=frames[1:], duration=100)
    rgb.crop((0, 0, 1, 1)).save(f["one.png"])
    f["trunc.safetensors"].write_bytes(weights.read_bytes()[:3000])
    f["random.pt"].write_bytes(np.random.RandomState(0).bytes(5000))
    f["empty.safetensors"].write_bytes(b"")
    return f


@pytest.fixture(scope="module")
def ctx(tmp_path_factory, tiny, tiny_files):
    cfg, weights = tiny_files
    files = _make_files(tmp_path_factory.mktemp("inputs"), weights)

    def load(**kw):
        return Localizer.from_pretrained("tiny", str(kw.pop("pretrained", weights)), model_config=str(cfg),
                                         cache_dir=None, **{"device": "cpu", **kw})
    opts = {"--model": "tiny", "--model-config": cfg, "--pretrained": weights, "--device": "cpu"}
    return SimpleNamespace(loc=tiny, f=files, load=load, opts=opts, model=[x for kv in opts.items() for x in kv])


def with_model(c, argv: list) -> list:
    """argv plus the tiny model's options that argv does not set itself."""
    return [*argv, *(x for k, v in c.opts.items() if k not in argv for x in (k, v))]


def _digests(ctx) -> dict:
    return {k: hashlib.sha1(p.read_bytes()).hexdigest() for k, p in ctx.f.items() if p.is_file()}


def two(c, image, **kw):
    """locate_many(image, ["red hawk", "barn owl"]) with the module's tiny model."""
    return c.loc.locate_many(image, ["red hawk", "barn owl"], **kw)


# (case, call, raises, fragment of the message)
BAD_API = [
    ("missing file", lambda c: two(c, c.f["missing"]), UsageError, "not found"),
    ("folder for a file", lambda c: two(c, c.f["folder"]), UsageError, "is a folder"),
    ("empty file", lambda c: two(c, c.f["empty.png"]), WorkError, "not an image"),
    ("truncated PNG", lambda c: two(c, c.f["trunc.png"]), WorkError, "truncated"),
    ("truncated JPEG", lambda c: two(c, c.f["trunc.jpg"]), WorkError, "truncated"),
    ("text named .jpg", lambda c: two(c, c.f["text.jpg"]), WorkError, "not an image"),
    ("decompression bomb (30000 x 30000 header)", lambda c: two(c, c.f["bomb.png"]), WorkError, "max_pixels="),
    ("over max_pixels=100", lambda c: c.load(max_pixels=100).locate_many(c.f["ok.png"], ["a", "b"]),
     WorkError, "over the limit of 100 pixels"),
    ("max_pixels=0", lambda c: load_image(c.f["ok.png"], max_pixels=0), UsageError, "max_pixels"),
    ("max_pixels=True", lambda c: c.load(max_pixels=True), UsageError, "max_pixels"),
    ("empty concept", lambda c: c.loc.locate_many(c.f["ok.png"], ["", "b"]), UsageError, "empty or blank"),
    ("blank concept", lambda c: c.loc.locate(c.f["ok.png"], " \t\u3000", vs=["b"]), UsageError, "empty or blank"),
    ("blank reference", lambda c: c.loc.locate(c.f["ok.png"], "a", vs=[" "]), UsageError, "empty or blank"),
    ("no concepts", lambda c: c.loc.locate_many(c.f["ok.png"], []), UsageError, "no concepts"),
    ("concept not a string", lambda c: c.loc.locate_many(c.f["ok.png"], [5, "b"]), UsageError, "concept strings"),
    ("concepts as one string", lambda c: c.loc.locate_many(c.f["ok.png"], "hawk"), UsageError, "list of concept"),
    ("alpha NaN", lambda c: two(c, c.f["ok.png"], alpha=float("nan")), UsageError, "alpha"),
    ("alpha inf", lambda c: two(c, c.f["ok.png"], alpha=float("inf")), UsageError, "alpha"),
    ("alpha -1", lambda c: two(c, c.f["ok.png"], alpha=-1.0), UsageError, "alpha"),
    ("alpha '1'", lambda c: two(c, c.f["ok.png"], alpha="1"), UsageError, "alpha"),
    ("unknown method", lambda c: two(c, c.f["ok.png"], method="cam"), UsageError, "method"),
    ("float array", lambda c: two(c, np.zeros((4, 4, 3), np.float32)), UsageError, "uint8"),
    ("4-channel array", lambda c: two(c, np.zeros((4, 4, 4), np.uint8)), UsageError, "(H, W, 3)"),
    ("0-pixel array", lambda c: two(c, np.zeros((0, 4, 3), np.uint8)), UsageError, "(H, W, 3)"),
    ("not an image object", lambda c: two(c, {"image": 1}), UsageError, "expected an image path"),
    ("PIL mode La", lambda c: two(c, Image.new("La", (4, 4))), UsageError, "convert it to RGB"),
    ("no images", lambda c: two(c, []), UsageError, "no images"),
    ("image_size 30 (patch 8)", lambda c: c.load(image_size=30), UsageError, "multiple of the patch size"),
    ("image_size 0", lambda c: c.load(image_size=0), UsageError, "multiple of the patch size"),
    ("image_size 8.5", lambda c: c.load(image_size=8.5), UsageError, "whole number"),
    ("device tpu", lambda c: c.load(device="tpu"), UsageError, "device"),
    ("CUDA asked for, absent", lambda c: c.load(device="cuda") if not torch.cuda.is_available()
     else pytest.skip("CUDA is available"), UsageError, "CUDA"),
    ("missing checkpoint", lambda c: c.load(pretrained=c.f["nope.pt"]), UsageError, "not found"),
    ("truncated .safetensors", lambda c: c.load(pretrained=c.f["trunc.safetensors"]), WorkError,
     "could not load weights"),
    ("empty .safetensors", lambda c: c.load(pretrained=c.f["empty.safetensors"]), WorkError,
     "could not load weights"),
    ("random-bytes .pt", lambda c: c.load(pretrained=c.f["random.pt"]), WorkError, "could not load weights"),
]


@pytest.mark.parametrize("case, call, raises, fragment", BAD_API, ids=[r[0] for r in BAD_API])
def test_bad_input_api(ctx, case, call, raises, fragment):
    before = _digests(ctx)
    with pytest.raises(raises) as err:
        call(ctx)
    assert fragment.lower() in str(err.value).lower() and "\n" not in str(err.value)
    assert _digests(ctx) == before


def cli(args) -> SimpleNamespace:
    """`zsfinercam ARGS` in this process: exit code, stdout, non-empty stderr lines."""
    import contextlib
    import io

    from zsfinercam.cli import main

    out, err = io.StringIO(), io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        warnings.simplefilter("always")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as done:
            code = done.code
    lines = [ln for ln in err.getvalue().splitlines() if ln.strip()]
    return SimpleNamespace(code=code, out=out.getvalue(), err=without_notes(lines),
                           notes=[ln for ln in lines if NOTE.match(ln)])


NOTE = re.compile(r"zsfinercam: .* \.\.\.$")  # "loading toy (embedded) on cpu ...": what is happening, not a problem


def without_notes(lines: list[str]) -> list[str]:
    """stderr lines less the progress notes (zsfinercam.io.progress.note)."""
    return [ln for ln in lines if not NOTE.match(ln)]


# (case, arguments (c: context, o: out folder), exit status, fragment of the one stderr line)
BAD_CLI = [
    ("missing file", lambda c, o: ["locate", c.f["missing"], "a", "b"], 2, "does not exist"),
    ("folder for a file", lambda c, o: ["locate", c.f["folder"], "a", "b"], 2, "is a directory"),
    ("empty file", lambda c, o: ["locate", c.f["empty.png"], "a", "b"], 1, "not an image"),
    ("truncated PNG", lambda c, o: ["locate", c.f["trunc.png"], "a", "b"], 1, "truncated"),
    ("truncated JPEG", lambda c, o: ["locate", c.f["trunc.jpg"], "a", "b"], 1, "truncated"),
    ("text named .jpg", lambda c, o: ["locate", c.f["text.jpg"], "a", "b"], 1, "not an image"),
    ("decompression bomb", lambda c, o: ["locate", c.f["bomb.png"], "a", "b"], 1, "--max-pixels"),
    ("--max-pixels 100", lambda c, o: ["locate", c.f["ok.png"], "a", "b", "--max-pixels", "100"], 1, "--max-pixels"),
    ("--max-pixels 0", lambda c, o: ["locate", c.f["ok.png"], "a", "b", "--max-pixels", "0"], 2, "--max-pixels"),
    ("blank concept", lambda c, o: ["locate", c.f["ok.png"], "  ", "b"], 2, "empty or blank"),
    ("--alpha nan", lambda c, o: ["locate", c.f["ok.png"], "a", "b", "--alpha", "nan"], 2, "--alpha"),
    ("--alpha inf", lambda c, o: ["locate", c.f["ok.png"], "a", "b", "--alpha", "inf"], 2, "--alpha"),
    ("--alpha -1", lambda c, o: ["locate", c.f["ok.png"], "a", "b", "--alpha", "-1"], 2, "--alpha"),
    ("--image-size 30", lambda c, o: ["locate", c.f["ok.png"], "a", "b", "--image-size", "30"], 2, "patch size"),
    ("--image-size 0", lambda c, o: ["locate", c.f["ok.png"], "a", "b", "--image-size", "0"], 2, "--image-size"),
    ("--device cuda, absent", lambda c, o: ["locate", c.f["ok.png"], "a", "b", "--device", "cuda"], 2, "CUDA"),
    ("missing checkpoint", lambda c, o: ["locate", c.f["ok.png"], "a", "b", "--pretrained", c.f["nope.pt"]],
     2, "not found"),
    ("truncated .safetensors", lambda c, o: ["locate", c.f["ok.png"], "a", "b", "--pretrained",
                                             c.f["trunc.safetensors"]], 1, "could not load weights"),
    ("random-bytes .pt", lambda c, o: ["locate", c.f["ok.png"], "a", "b", "--pretrained", c.f["random.pt"]],
     1, "could not load weights"),
    ("--out is a file", lambda c, o: ["locate", c.f["ok.png"], "a", "b", "--out", c.f["ok.png"]], 2, "is a file"),
    ("batch: missing input", lambda c, o: ["batch", c.f["missing"], "-c", "a", "--out", o], 2, "input not found"),
    ("batch: glob matches nothing", lambda c, o: ["batch", c.f["folder"] / "*.png", "-c", "a", "--out", o],
     2, "no files match"),
    ("batch: folder without images", lambda c, o: ["batch", c.f["folder"], "-c", "a", "--out", o],
     2, "no images found"),
    ("batch: blank --concepts", lambda c, o: ["batch", c.f["ok.png"], "-c", " ", "--out", o], 2, "empty or blank"),
    ("batch: no --concepts", lambda c, o: ["batch", c.f["ok.png"], "--out", o], 2, "--concepts"),
    ("batch: --batch-size 0", lambda c, o: ["batch", c.f["ok.png"], "-c", "a", "--batch-size", "0", "--out", o],
     2, "--batch-size"),
    ("batch: --max-pixels -1", lambda c, o: ["batch", c.f["ok.png"], "-c", "a", "--max-pixels", "-1", "--out", o],
     2, "--max-pixels"),
    ("batch: --out is the input folder", lambda c, o: ["batch", c.f["ok.png"].parent, "-c", "a", "--out",
                                                       c.f["ok.png"].parent], 2, "input folder itself"),
    ("batch: --out is an input file", lambda c, o: ["batch", c.f["ok.png"], "-c", "a", "--out", c.f["ok.png"]],
     2, "is a file"),
]


@pytest.mark.parametrize("case, args, code, fragment", BAD_CLI, ids=[r[0] for r in BAD_CLI])
def test_bad_input_cli(ctx, tmp_path, case, args, code, fragment):
    if "cuda" in case and torch.cuda.is_available():
        pytest.skip("CUDA is available")
    before = _digests(ctx)
    argv = with_model(ctx, args(ctx, tmp_path / "out"))
    run = cli([*argv, *([] if "--out" in argv else ["--out", tmp_path / "out"])])
    assert run.code == code, run.err
    assert len(run.err) == 1 and run.err[0].startswith("zsfinercam: error: "), run.err
    assert fragment.lower() in run.err[0].lower()
    assert _digests(ctx) == before


SUBPROCESS = ["decompression bomb", "truncated .safetensors", "random-bytes .pt"]


@pytest.mark.parametrize("case", SUBPROCESS)
def test_bad_input_real_process(ctx, tmp_path, case):
    """The same answer from a real `python -m zsfinercam`: one line, no traceback, exit 1."""
    _, args, code, fragment = next(r for r in BAD_CLI if r[0] == case)
    argv = with_model(ctx, args(ctx, tmp_path))
    before = _digests(ctx)
    proc = subprocess.run([sys.executable, "-m", "zsfinercam", *map(str, argv), "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == code, proc.stderr
    lines = without_notes([ln for ln in proc.stderr.splitlines() if ln.strip()])
    assert len(lines) == 1 and "Traceback" not in proc.stderr and fragment in lines[0], proc.stderr
    assert _digests(ctx) == before


def test_pil_global_limit_is_left_alone(ctx, tmp_path, monkeypatch):
    """Another thread's PIL opens are never refused because of our tighter cap."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)  # PIL's limit here; keeps the test images small
    Image.new("RGB", (100, 90)).save(tmp_path / "big.png")  # 9,000 pixels: PIL opens it without a word
    stop, failures = threading.Event(), []

    def tight():
        while not stop.is_set():
            load_image(ctx.f["ok.png"], max_pixels=2_500)  # 2,080 pixels, under a cap PIL would refuse big.png at
    worker = threading.Thread(target=tight)
    worker.start()
    try:
        for _ in range(300):
            try:
                with Image.open(tmp_path / "big.png") as img:
                    img.load()
            except Image.DecompressionBombError as err:
                failures.append(err)
    finally:
        stop.set()
        worker.join()
    assert not failures


def test_pil_global_is_written_only_for_a_cap_above_its_own(ctx, monkeypatch):
    from zsfinercam.io import images

    writes, filters = [], []

    class Spy:  # PIL's Image module, recording writes
        def __getattr__(self, name):
            return getattr(Image, name)

        def __setattr__(self, name, value):
            writes.append(name)
            setattr(Image, name, value)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 123_456_789)  # a sentinel, above our default
    monkeypatch.setattr(images, "Image", Spy())
    monkeypatch.setattr(warnings, "catch_warnings", lambda *a, **k: filters.append(1) or real_catch(*a, **k))
    load_image(ctx.f["ok.png"])
    load_image(ctx.f["ok.png"], max_pixels=123_456_789)
    with pytest.raises(WorkError, match="max_pixels="):
        load_image(ctx.f["bomb.png"])
    assert writes == [] and filters == [] and Image.MAX_IMAGE_PIXELS == 123_456_789  # the common path
    load_image(ctx.f["ok.png"], max_pixels=None)
    with pytest.raises(WorkError, match="could not be read"):  # no limit: PIL gets to decode, and fails
        load_image(ctx.f["bomb.png"], max_pixels=10**10)
    assert writes and filters and Image.MAX_IMAGE_PIXELS == 123_456_789 and DEFAULT_MAX_PIXELS == 89_478_485


real_catch = warnings.catch_warnings


# (case, file, concepts, upright (H, W) of the map, warning fragment or None)
ODD = [
    ("CMYK JPEG", "cmyk.jpg", None, (H, W), None),
    ("16-bit grey PNG", "g16.png", None, (H, W), None),
    ("RGBA PNG", "rgba.png", None, (H, W), None),
    ("palette PNG", "p.png", None, (H, W), None),
    ("palette PNG with transparency", "ptrans.png", None, (H, W), None),
    ("LA PNG", "la.png", None, (H, W), None),
    ("grey PNG", "l.png", None, (H, W), None),
    ("1-bit PNG", "bw.png", None, (H, W), None),
    ("EXIF-rotated JPEG", "rot.jpg", None, (W, H), None),
    ("animated GIF", "anim.gif", None, (H, W), "only the first frame"),
    ("animated WebP", "anim.webp", None, (H, W), "only the first frame"),
    ("unicode path", "ü ñ 鳥.png", None, (H, W), None),
    ("1x1 image", "one.png", None, (1, 1), None),
    ("concept longer than the text context", "ok.png", ["red " * 40, "owl"], (H, W), "truncated"),
    ("unicode concepts", "ok.png", ["鳥", "ñu"], (H, W), None),
]


@pytest.mark.parametrize("case, name, concepts, shape, warns", ODD, ids=[r[0] for r in ODD])
def test_odd_but_valid_api(ctx, case, name, concepts, shape, warns):
    before = _digests(ctx)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = ctx.loc.locate_many(ctx.f[name], concepts or ["red hawk", "barn owl"])
    messages = [str(w.message) for w in caught if not issubclass(w.category, DeprecationWarning)]
    assert [m for m in messages if warns and warns in m] if warns else not messages, messages
    for res in results:
        assert res.heatmap.shape == shape and res.image.shape[:2] == shape
        assert np.isfinite(res.heatmap).all() and 0 <= res.heatmap.min() and res.heatmap.max() <= 1
    assert _digests(ctx) == before


@pytest.mark.parametrize("case, name, concepts, shape, warns", ODD, ids=[r[0] for r in ODD])
def test_odd_but_valid_cli(ctx, tmp_path, case, name, concepts, shape, warns):
    before = _digests(ctx)
    run = cli(["locate", ctx.f[name], *(concepts or ["red hawk", "barn owl"]), *ctx.model, "--out", tmp_path,
               "--json"])
    assert run.code == 0, run.err
    hints = [ln for ln in run.err if ln.startswith("zsfinercam: hint:")]  # maps with no peak say why
    errors = [ln for ln in run.err if ln not in hints]
    assert len(errors) == (1 if warns else 0) and all(warns in ln for ln in errors), run.err
    records = [json.loads(line) for line in run.out.splitlines()]
    assert len(hints) == sum(r["peak"] is None for r in records), run.err
    for record in records:
        assert np.load(record["files"]["heatmap"]).shape == shape
        scale = max(1.0, 512 / max(shape))  # small images are drawn at 512 px on the long side
        assert Image.open(record["files"]["overlay"]).size == (round(shape[1] * scale), round(shape[0] * scale))
    assert _digests(ctx) == before


def test_duplicate_concepts(ctx, tmp_path):
    """API: kept, one result per concept given (results line up with the list). CLI: each
    concept mapped once, with one warning line."""
    results = ctx.loc.locate_many(ctx.f["ok.png"], ["hawk", "hawk ", "owl"])
    assert [r.concept for r in results] == ["hawk", "hawk", "owl"]
    assert np.array_equal(results[0].token_map, results[1].token_map)
    run = cli(["locate", ctx.f["ok.png"], "hawk", " hawk", "owl", *ctx.model, "--out", tmp_path, "--json"])
    assert run.code == 0 and [json.loads(r)["concept"] for r in run.out.splitlines()] == ["hawk", "owl"]
    assert len(run.err) == 1 and "more than once" in run.err[0] and "'hawk'" in run.err[0]


MODES = ["L", "LA", "RGB", "RGBA", "P", "CMYK", "I;16", "1"]


def _image(mode: str, w: int, h: int, seed: int) -> Image.Image:
    if mode == "I;16":
        return Image.fromarray((np.random.RandomState(seed).rand(h, w) * 65535).astype(np.uint16))
    return Image.fromarray(random_image(seed, h, w)).convert(mode)


@settings(max_examples=25, deadline=None)
@given(w=st.integers(1, 300), h=st.integers(1, 300), mode=st.sampled_from(MODES), seed=st.integers(0, 99),
       concept=st.text(min_size=1, max_size=300).filter(lambda s: s.strip() and s.strip() != "barn owl"))
def test_any_size_mode_and_concept_gives_a_map(tiny, w, h, mode, seed, concept):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # long concepts warn that they were truncated
        (res,) = tiny.locate_many(_image(mode, w, h, seed), [concept], vs=["barn owl"])
    assert res.heatmap.shape == (h, w) and res.image.shape == (h, w, 3)
    assert np.isfinite(res.heatmap).all() and res.heatmap.min() >= 0 and res.heatmap.max() <= 1
    assert np.isfinite(res.token_map).all() and res.token_map.shape == tiny.config.grid_size


@settings(max_examples=10, deadline=None)
@given(blank=st.text(alphabet=" \t\n\r\x0b\x0c\u00a0\u2003\u3000", max_size=12))
def test_blank_concepts_are_refused(tiny, blank):
    with pytest.raises(UsageError, match="empty or blank"):
        tiny.locate_many(random_image(0, 8, 8), [blank, "owl"])
