"""The figure scripts in examples/ run, and each panel names the base it used."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent


def test_make_figure_names_the_base_of_its_panels(tmp_path):
    out = tmp_path / "figure.png"
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "make_figure.py"), "--out", str(out),
                           "--base", "layercam"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "Layer-CAM alone peak" in done.stdout and Image.open(out).size == (3 * 256, 256 + 24)
