"""What zoom costs: trunk passes and time of a zoomed locate against an unzoomed one, and new
prompts on a zoomed, cached image against one plain forward, all measured in one run.

    python benchmarks/bench_zoom.py [--model ViT-B-16] [--rounds 3] [--device cpu]

Random weights for open_clip names (nothing is downloaded); `--model toy` uses the embedded
model. The image is a synthetic small subject (a bird a third of the canvas's side, at 3x the
model's input size). Text is encoded before timing (warm cache), as in bench_compare.py.
With random weights the search stops at whichever level the logits say, so the trunk passes
are reported with the time; the worst case is 1 + 4 x MAX_LEVELS images for a square image.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench_compare import best  # min of `rounds` timings (this folder is on sys.path when run)

ROOT = Path(__file__).resolve().parents[1]


class Trunk:
    """Counts the images the backend's trunk is given."""

    def __init__(self, backend):
        self.images, real = 0, backend.trunk

        def counted(pixels):
            self.images += pixels.shape[0]
            return real(pixels)

        backend.trunk = counted

    def during(self, fn) -> int:
        before = self.images
        fn()
        return self.images - before


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-B-16")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    return parser.parse_args()


def main() -> None:
    args = arguments()
    sys.path.insert(0, str(ROOT))
    import numpy as np
    import torch

    from zsfinercam import Localizer
    from zsfinercam.synthetic import list_classes, make_scene
    from zsfinercam import zoom
    from zsfinercam.zoom import MAX_LEVELS

    torch.manual_seed(0)
    loc = Localizer.from_pretrained(args.model, device=args.device, cache_dir=None)
    size = loc.config.image_size[0]
    bird = "red-headed blue-tailed striped-winged bird"
    image = np.asarray(make_scene(bird, 3, size, 1 / 3).image)
    refs = ["red-headed red-tailed striped-winged bird", "blue-headed blue-tailed striped-winged bird"]
    prompts = [c for c in list_classes("all") if c not in (bird, *refs)][:args.rounds + 1]  # related concepts
    loc.encode_text([bird, *refs, *prompts, "bird"])  # warm text cache
    trunk = Trunk(loc.backend)
    print(f"model {args.model} at {size} px, device {args.device}, torch threads {torch.get_num_threads()}, "
          f"image {image.shape[1]}x{image.shape[0]}")

    forward = best(lambda: loc.encode_image(image), args.rounds)
    plain = best(lambda: loc.locate(image, bird, vs=refs), args.rounds)
    zoomed = best(lambda: loc.locate(image, bird, vs=refs, zoom=True), args.rounds)
    images = trunk.during(lambda: loc.locate(image, bird, vs=refs, zoom=True))
    window = loc.locate(image, bird, vs=refs, zoom=True).window
    print(f"plain forward (trunk, 1 image)   {forward * 1e3:8.1f} ms")
    print(f"locate                           {plain * 1e3:8.1f} ms  1 image through the trunk")
    print(f"locate, zoom                     {zoomed * 1e3:8.1f} ms  {images} images through the trunk "
          f"(at most {1 + 4 * MAX_LEVELS}), window {window}")
    print(f"zoomed / unzoomed locate: {zoomed / plain:.2f}x")
    real_search = zoom.search

    def deepest(size, score, whole_score, min_side, levels):  # every level taken, each window really scored
        smaller = lambda windows: [s - 1e6 * (w[2] - w[0]) for w, s in zip(windows, score(windows))]  # noqa: E731
        return real_search(size, smaller, -float("inf"), min_side, levels)

    zoom.search = deepest
    slowest = best(lambda: loc.locate(image, bird, vs=refs, zoom=True), args.rounds)
    images = trunk.during(lambda: loc.locate(image, bird, vs=refs, zoom=True))
    zoom.search = real_search
    print(f"locate, zoom, every level taken  {slowest * 1e3:8.1f} ms  {images} images through the trunk: "
          f"{slowest / plain:.2f}x locate")

    for zoom_on in ("bird", None):
        feats = loc.encode_image(image)
        loc.locate(feats, bird, vs=refs, zoom=True, zoom_on=zoom_on)  # windows and their Jacobians, once
        counter = iter(prompts)
        runs = []

        def new_prompt():
            runs.append(trunk.during(lambda: loc.locate(feats, next(counter), vs=refs, zoom=True, zoom_on=zoom_on)))

        t = best(new_prompt, args.rounds)
        label = f"zoom_on {zoom_on!r}" if zoom_on else "each concept's own window"
        print(f"new prompt on the zoomed cached image ({label}): {t * 1e3:7.1f} ms = {t / forward:.4f}x a plain "
              f"forward; images through the trunk per prompt: {runs}")


if __name__ == "__main__":
    main()
