"""Output files: atomic writes with the umask's permissions, stems, and the overwrite guard."""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from PIL import Image

from conftest import random_image
from zsfinercam.batch.run import find_images, run_batch
from zsfinercam.cli import main
from zsfinercam.errors import UsageError
from zsfinercam.io.files import (RESULT_FILE, TMP_PREFIX, atomic_write, image_stem, json_bytes,
                                 refuse_overwriting_inputs, result_name_pattern, safe_stem, source_stem)


@pytest.fixture(params=[0o022, 0o077], ids=["umask022", "umask077"])
def umask(request):
    """The process umask set for one test (and restored after); the value is the mode files must get."""
    old = os.umask(request.param)
    try:
        yield 0o666 & ~request.param
    finally:
        os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def model_args(tiny_files) -> list[str]:
    cfg, weights = tiny_files
    return ["--model", "tiny", "--model-config", str(cfg), "--pretrained", str(weights), "--device", "cpu"]


def test_atomic_write_creates_files_as_open_does(umask, tmp_path):
    atomic_write(tmp_path / "new.json", lambda f: f.write(b"{}"))
    with open(tmp_path / "plain.json", "w") as f:
        f.write("{}")
    assert mode(tmp_path / "new.json") == mode(tmp_path / "plain.json") == umask
    assert (tmp_path / "new.json").read_bytes() == b"{}"


def test_atomic_write_keeps_the_mode_of_a_file_it_replaces(umask, tmp_path):
    path = tmp_path / "kept.npy"
    path.write_bytes(b"old")
    os.chmod(path, 0o640)
    atomic_write(path, lambda f: f.write(b"new"))
    assert path.read_bytes() == b"new" and mode(path) == 0o640


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "a.json"
    path.write_bytes(b"old")

    def fail(f):
        f.write(b"half")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        atomic_write(path, fail)
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_result_files_overlay_heatmap_json(umask, tiny, tmp_path):
    res = tiny.locate(random_image(3), "red hawk", vs=["barn owl"])
    files = res.save(tmp_path / "out")
    assert set(files) == {"overlay", "heatmap", "json"}
    assert {k: mode(v) for k, v in files.items()} == dict.fromkeys(files, umask)


def test_locate_and_compare_files_through_the_cli(umask, tiny_files, tmp_path):
    image = tmp_path / "bird.png"
    Image.fromarray(random_image(4)).save(image)
    main(["locate", str(image), "red hawk", "--vs", "barn owl", *model_args(tiny_files), "--out", str(tmp_path / "l")])
    main(["compare", str(image), "red hawk", "barn owl", *model_args(tiny_files), "--out", str(tmp_path / "c")])
    written = sorted(p for p in tmp_path.rglob("*") if p.is_file() and p != image)  # the text cache too
    assert {p.name: mode(p) for p in written} == {p.name: umask for p in written}
    outputs = [p for p in written if p.parent.name in ("l", "c")]
    assert sorted(p.suffix for p in outputs) == [".json", ".json", ".npy", ".png", ".png"]  # grid + overlay
    assert all(p.name.startswith(image_stem(image) + "_") for p in outputs)  # one image-stem function
    assert any(p.suffix == ".safetensors" for p in written)


def test_batch_outputs(umask, tiny, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(2):
        Image.fromarray(random_image(i)).save(folder / f"p{i}.png")
    run_batch(tiny, find_images([folder]), tmp_path / "out", ["red hawk", "barn owl"], progress=False)
    written = [p for p in (tmp_path / "out").rglob("*") if p.is_file() and p.name != ".lock"]
    assert len(written) == 2 + 2 * 2 * 3  # manifest, run.json; per image and concept: overlay, heatmap, JSON
    assert {str(p): mode(p) for p in written} == {str(p): umask for p in written}
    assert not list((tmp_path / "out").rglob(f"{TMP_PREFIX}*"))


def test_image_stems_are_readable_and_tell_folders_apart(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    a, b = tmp_path / "x" / "Red Bird.v2.png", tmp_path / "y" / "Red Bird.v2.png"
    assert image_stem(a).startswith("red-bird-v2-") and image_stem(a) != image_stem(b)
    assert image_stem(a) == image_stem(tmp_path / "y" / ".." / "x" / "Red Bird.v2.png")  # resolved
    assert image_stem(tmp_path / ("ü" * 80 + ".png")).startswith("ü" * 40 + "-")


def test_the_overwrite_guard_compares_resolved_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    image = tmp_path / "in.png"
    refuse_overwriting_inputs([tmp_path / "out.png"], [image])  # no clash: nothing raised
    with pytest.raises(UsageError, match=r"would overwrite the input .*in\.png; choose another --out"):
        refuse_overwriting_inputs([Path("sub/../in.png"), tmp_path / "b.png"], [image])


def test_json_bytes_round_trips_odd_file_names():
    name = "caf\udce9.png"  # a file name that is not UTF-8, as Python decodes it
    data = json_bytes({"image": name, "concept": "鳥"})
    data.decode("utf-8")
    assert json.loads(data) == {"image": name, "concept": "鳥"}
    assert "鳥" in json_bytes({"c": "鳥"}).decode("utf-8")


# the one naming rule ------------------------------------------------------------------
def test_one_naming_rule_for_save_locate_and_batch(tiny, tiny_files, tmp_path, capsys):
    """`LocateResult.save`, `locate` and `batch` (which the Ray engine shares) name a map alike:
    image, concept, settings label, then a hash of the settings and references."""
    image = tmp_path / "Bird.png"
    Image.fromarray(random_image(4)).save(image)
    res = tiny.locate(str(image), "red hawk", vs=["barn owl"])
    stem = res.default_stem()
    assert stem == f"{image_stem(image)}_{safe_stem('red hawk')}_finer-weighted-a1-hirescam-{stem[-8:]}"
    assert Path(res.save(tmp_path / "api")["json"]).name == f"{stem}.json"
    main(["locate", str(image), "red hawk", "--vs", "barn owl", *model_args(tiny_files), "--out",
          str(tmp_path / "cli"), "--json", "-q"])
    assert Path(json.loads(capsys.readouterr().out)["files"]["json"]).name == f"{stem}.json"
    run_batch(tiny, [image], tmp_path / "batch", ["red hawk"], vs=["barn owl"], progress=False)
    (record,) = [json.loads(line) for line in (tmp_path / "batch" / "manifest.jsonl").read_text().splitlines()]
    assert record["outputs"][0]["files"]["json"] == f"{image_stem(image)}/{stem}.json"
    assert RESULT_FILE.fullmatch(f"{stem}_overlay.png") and RESULT_FILE.fullmatch(f"{stem}_heatmap.png")


@pytest.mark.parametrize("change", [dict(alpha=0.5), dict(objective="mean"), dict(base="layercam"),
                                    dict(templates=["a {}."]), dict(vs=["eagle"]), dict(method="base")])
def test_other_settings_get_other_names_the_same_settings_the_same(tiny, change):
    image = random_image(4)
    first = tiny.locate(image, "red hawk", vs=["barn owl"])
    assert tiny.locate(image, "red hawk", vs=["barn owl"]).default_stem() == first.default_stem()
    other = tiny.locate(image, "red hawk", **{"vs": ["barn owl"], **change})
    assert other.default_stem() != first.default_stem()
    assert result_name_pattern(source_stem("array"), "red hawk", other.settings()).fullmatch(
        f"{other.default_stem()}_heatmap.npy")


def test_the_locate_guard_checks_the_names_it_will_write_before_loading(tiny_files, tmp_path, monkeypatch, capsys):
    """An image in --out named as a result of these settings would be (whatever the references:
    their hash is not known before the model runs): refused before the model loads."""
    from zsfinercam.io import files

    monkeypatch.setattr(files, "image_stem", lambda path: "bird")  # a real stem hashes the image's own name
    clash = tmp_path / f"bird_{safe_stem('red hawk')}_finer-weighted-a1-hirescam-0123abcd_overlay.png"
    other = tmp_path / f"bird_{safe_stem('red hawk')}_finer-weighted-a1-layercam-0123abcd_overlay.png"
    for path in (clash, other):
        Image.fromarray(random_image(4)).save(path)
    missing = [*model_args(tiny_files)[:4], "--pretrained", str(tmp_path / "no-weights.safetensors"), "--device", "cpu"]
    with pytest.raises(SystemExit) as done:
        main(["locate", str(clash), "red hawk", *missing, "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert done.value.code == 2 and "would overwrite the input" in err and "loading" not in err
    with pytest.raises(SystemExit):  # another base's name cannot be written: the model loads (and fails here)
        main(["locate", str(other), "red hawk", *missing, "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert "loading" in err and "overwrite" not in err
