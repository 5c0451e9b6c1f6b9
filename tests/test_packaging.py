"""A plain, non-editable install finds the vocabularies and the embedded toy model."""
from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_wheel_ships_prompts_and_the_toy_model(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path / "dist")], check=True, capture_output=True, cwd=tmp_path)
    (wheel,) = (tmp_path / "dist").glob("zsfinercam-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in ("zsfinercam/prompts/cub200.txt", "zsfinercam/prompts/templates_short.txt",
                   "zsfinercam/assets/toy/config.json", "zsfinercam/assets/toy/toy.safetensors",
                   "zsfinercam/py.typed"):
        assert needed in names, needed
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, capture_output=True)
    probe = ("import zsfinercam, zsfinercam.concepts.vocab as v; from zsfinercam.backends.open_clip_weights import TOY_DIR; "
             "print(zsfinercam.__file__, len(v.load_vocab('cub200')), (TOY_DIR / 'toy.safetensors').is_file())")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path,
                         env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}, check=True).stdout.split()
    assert out[0].startswith(str(site)) and out[1:] == ["200", "True"]
