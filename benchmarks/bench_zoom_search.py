"""How many refinement levels the zoom search should take: pointing on the differing part and how
often the window holds the whole bird, per level count, on the small-subject synthetic set.

    python benchmarks/bench_zoom_search.py [--n 120] [--subject-scale 0.33] [--levels 1,2,3,4] [--margins 0]

Embedded toy model, default base (HiResCAM), Finer-CAM against the one-part references, as
`zsfinercam eval --synthetic N --subject-scale S --zoom`. Levels beyond the first cost up to 4
trunk images each; a margin around the found window one more. The mean count is printed.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main() -> None:
    root = Path(__file__).resolve().parents[1]
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    import numpy as np

    import zsfinercam as zf
    from zsfinercam import zoom
    from zsfinercam.evaluation import metrics
    from zsfinercam.evaluation.evaluate import synthetic_items
    from zsfinercam.synthetic import make_dataset

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=120)
    parser.add_argument("--subject-scale", type=float, default=0.33)
    parser.add_argument("--levels", default="1,2,3,4")
    parser.add_argument("--margins", default="0", help="fractions of the window's side added on every side")
    args = parser.parse_args()
    loc = zf.Localizer.from_pretrained("toy", device="cpu", cache_dir=None)
    items = synthetic_items(args.n, size=64, subject_scale=args.subject_scale)
    birds = [np.logical_or.reduce(list(s.masks.values()))
             for s in make_dataset(args.n, 12345, "all", 64, args.subject_scale)]
    trunk, real = [0], loc.backend.trunk
    loc.backend.trunk = lambda pixels: (trunk.__setitem__(0, trunk[0] + pixels.shape[0]), real(pixels))[1]
    print(f"{args.n} images, subject scale {args.subject_scale}, toy model, base {loc.options().base}")
    for levels, margin in ((int(v), float(m)) for v in args.levels.split(",") for m in args.margins.split(",")):
        zoom.MAX_LEVELS, zoom.MARGIN = levels, margin
        pointing, inside, trunk[0] = [], [], 0
        for item, bird in zip(items, birds):
            res = loc.locate(item.image, item.concept, vs=item.references, zoom=True)
            pointing.append(metrics.pointing_game(res.heatmap, item.mask))
            x0, y0, x1, y1 = res.window or (0, 0, bird.shape[1], bird.shape[0])
            inside.append(bird[y0:y1, x0:x1].sum() == bird.sum())
        print(f"levels {levels}, margin {margin:g}: pointing {np.mean(pointing):.3f}, whole bird in the window {np.mean(inside):.2f}, "
              f"trunk images per locate {trunk[0] / args.n:.1f}")


if __name__ == "__main__":
    main()
