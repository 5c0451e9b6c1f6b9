"""Size and time of saving one 12-megapixel result (4000 x 3000), per --save / --heatmap-format choice.

    python benchmarks/bench_save.py [--root TREE] [--rounds 2]

No model: a smooth random 14 x 14 token map over a random photo-sized image. `--root` imports
zsfinercam from another checkout (e.g. an export of an older commit, for a before/after
table); a tree whose `save` takes no options is timed with its defaults only. The heatmap is
made before timing (a saved result has usually been looked at).
"""
from __future__ import annotations

import argparse
import inspect
import sys
import tempfile
import time
from pathlib import Path

CHOICES = [  # (label, keyword arguments of LocateResult.save)
    ("all, npy (default)", {}),
    ("all, npy16", {"heatmap_format": "npy16"}),
    ("all, png16", {"heatmap_format": "png16"}),
    ("heatmap,json npy16", {"files": ("heatmap", "json"), "heatmap_format": "npy16"}),
    ("overlay,json", {"files": ("overlay", "json")}),
    ("json", {"files": ("json",)}),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--width", type=int, default=4000)
    parser.add_argument("--height", type=int, default=3000)
    args = parser.parse_args()
    sys.path.insert(0, str(args.root))
    import numpy as np
    from PIL import Image

    from zsfinercam.result import LocateResult

    rng = np.random.RandomState(0)
    token = np.asarray(Image.fromarray(rng.rand(4, 4).astype(np.float32)).resize((14, 14), Image.BICUBIC))
    small = rng.randint(0, 255, (args.height // 50, args.width // 50, 3), np.uint8)  # photo-like: smooth
    image = np.asarray(Image.fromarray(small).resize((args.width, args.height), Image.BICUBIC))
    res = LocateResult("bird", ("cat",), {"bird": 2.0, "cat": 1.0}, np.clip(token, 0, None), image, base="hirescam")
    _ = res.heatmap
    options = inspect.signature(res.save).parameters
    print(f"# {args.width}x{args.height} result, zsfinercam from {args.root}, best of {args.rounds}")
    print(f"{'files':<22} {'seconds':>8} {'MB':>8}  per file (MB)")
    for label, kwargs in CHOICES:
        if any(k not in options for k in kwargs):
            continue
        best = float("inf")
        for _ in range(args.rounds):
            with tempfile.TemporaryDirectory() as out:
                start = time.perf_counter()
                files = res.save(out, "bird", **kwargs)
                best = min(best, time.perf_counter() - start)
                sizes = {k: Path(v).stat().st_size / 1e6 for k, v in files.items()}
        each = ", ".join(f"{k} {v:.2f}" for k, v in sizes.items())
        print(f"{label:<22} {best:8.2f} {sum(sizes.values()):8.2f}  {each}")


if __name__ == "__main__":
    main()
