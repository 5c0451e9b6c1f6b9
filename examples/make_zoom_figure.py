"""Make docs/images/zoom.png and examples/small_bird.png: a small bird in a large cluttered photo,
Finer-CAM without and with zoom (embedded toy model, its default CAM base).

    python examples/make_zoom_figure.py

The bird (64 px) covers a third of the 192-px canvas's side; the toy model's input is 64 px,
so without zoom it sees the bird at about 21 px. One picked example (seed 3), not a rate:
docs/zoom.md gives the rates on 300 images.
"""
from pathlib import Path

import numpy as np
from figures import base_title, panel_row
from PIL import Image

import zsfinercam as zf
from zsfinercam.synthetic import make_scene

HERE = Path(__file__).resolve().parent
CONCEPT = "red-headed blue-tailed striped-winged bird"
REFERENCE = "red-headed blue-tailed spotted-winged bird"  # differs only in the wings
SEED = 3


def main() -> None:
    loc = zf.Localizer.from_pretrained("toy", device="cpu", cache_dir=None)
    scene = make_scene(CONCEPT, SEED, 64, 1 / 3)
    scene.image.save(HERE / "small_bird.png")
    feats = loc.encode_image(np.asarray(scene.image))
    plain = loc.locate(feats, CONCEPT, vs=[REFERENCE])
    zoomed = loc.locate(feats, CONCEPT, vs=[REFERENCE], zoom=True)
    base = base_title(plain.base)
    panels = [("image", scene.image), (f"Finer-CAM ({base} base)", plain.overlay()),
              (f"Finer-CAM + zoom ({base} base)", zoomed.overlay())]
    out = panel_row(panels, Image.BILINEAR)
    target = HERE.parent / "docs" / "images" / "zoom.png"
    out.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(target, optimize=True)  # a small file
    on_wings = [bool(scene.masks["wings"][r.peak[1], r.peak[0]]) if r.peak else False for r in (plain, zoomed)]
    print(f"peak without zoom {plain.peak} (on the wings: {on_wings[0]}), with zoom {zoomed.peak} "
          f"(on the wings: {on_wings[1]}), window {zoomed.window} -> {target}")


if __name__ == "__main__":
    main()
