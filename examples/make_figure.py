"""Make the README picture: the image, the CAM base alone, and Finer-CAM on that base (embedded toy model).

    python examples/make_figure.py                      # writes docs/images/compare.png
    python examples/make_figure.py --out figure.png --base gradcam

Each panel's title names the base it used (the model's default base unless --base is given).
"""
import argparse
from pathlib import Path

from figures import base_title, panel_row
from PIL import Image

import zsfinercam as zf
from zsfinercam.options import BASES

HERE = Path(__file__).resolve().parent
CONCEPT = "red-headed blue-tailed striped-winged bird"
REFERENCE = "red-headed blue-tailed spotted-winged bird"  # differs only in the wings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE.parent / "docs" / "images" / "compare.png")
    parser.add_argument("--base", choices=BASES, default=None, help="CAM base [default: the model's]")
    args = parser.parse_args(argv)
    loc = zf.Localizer.from_pretrained("toy", device="cpu", cache_dir=None)
    image = Image.open(HERE / "bird.png").convert("RGB")
    feats = loc.encode_image(image)
    alone = loc.locate(feats, CONCEPT, alpha=0, base=args.base)  # alpha 0: the base alone, no references
    finer = loc.locate(feats, CONCEPT, vs=[REFERENCE], base=args.base)
    base = base_title(finer.base)
    panels = [("image", image), (f"{base} alone", alone.overlay()),
              (f"Finer-CAM ({base} base) vs spotted wings", finer.overlay())]
    out = panel_row(panels)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    out.save(args.out)
    print(f"{CONCEPT}: {base} alone peak {alone.peak}, Finer-CAM peak {finer.peak} -> {args.out}")


if __name__ == "__main__":
    main()
