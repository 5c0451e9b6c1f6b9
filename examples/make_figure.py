"""Make examples/compare.png, the README picture: image, Grad-CAM, Finer-CAM (embedded toy model).

    python examples/make_figure.py
"""
from pathlib import Path

from PIL import Image, ImageDraw

import zsfinercam as zf

HERE = Path(__file__).resolve().parent
CONCEPT = "red-headed blue-tailed striped-winged bird"
REFERENCE = "red-headed blue-tailed spotted-winged bird"  # differs only in the wings
PANEL = 256


def main() -> None:
    loc = zf.Localizer.from_pretrained("toy", device="cpu", cache_dir=None)
    image = Image.open(HERE / "bird.png").convert("RGB")
    feats = loc.encode_image(image)
    grad = loc.locate(feats, CONCEPT, method="gradcam")
    finer = loc.locate(feats, CONCEPT, vs=[REFERENCE])
    panels = [("image", image), ("Grad-CAM", grad.overlay()), ("Finer-CAM vs spotted wings", finer.overlay())]
    out = Image.new("RGB", (PANEL * len(panels), PANEL + 24), "white")
    draw = ImageDraw.Draw(out)
    for i, (title, panel) in enumerate(panels):
        out.paste(panel.resize((PANEL, PANEL), Image.NEAREST), (i * PANEL, 24))
        draw.text((i * PANEL + 6, 5), title, fill="black")
    out.save(HERE / "compare.png")
    print(f"{CONCEPT}: Grad-CAM peak {grad.peak}, Finer-CAM peak {finer.peak} -> {HERE / 'compare.png'}")


if __name__ == "__main__":
    main()
