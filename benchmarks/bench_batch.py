"""`zsfinercam batch`, local engine vs Ray engine on the same folder, against a plain forward.

    python benchmarks/bench_batch.py [--model toy] [--images 32] [--batch-size 8] [--workers 1]
        [--gpus-per-worker 0] [--device cpu] [--ray-address ADDR]

Writes --images random 320x240 JPEGs into a temporary folder, then measures, in this run:
the plain forward of the image tower (decode + `encode_image`, chunks of --batch-size) in
images/s; the local engine (`run_batch`); the Ray engine on a cluster started here (or joined
with --ray-address), whose start (`ray.init`) is timed apart. Each engine is reported in
images/s and as a ratio to the plain forward; "Ray adds" is the start plus the run's extra
wall time over the local engine (worker start, model load per worker, scheduling).

A cluster started here listens on 127.0.0.1 only, as the engine's own (`ray_engine.import_ray`).
Random weights for open_clip names (nothing is downloaded); `--model toy` is the embedded model.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def main() -> None:
    root = Path(__file__).resolve().parents[1]
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    import numpy as np
    from PIL import Image

    import zsfinercam as zf
    from zsfinercam.batch.run import find_images, run_batch
    from zsfinercam.batch.ray_engine import RayOptions, import_ray
    from zsfinercam.io.images import load_image

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="toy")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--gpus-per-worker", type=float, default=0.0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--ray-address", default=None)
    args = parser.parse_args()
    ray = import_ray(local=not args.ray_address)
    concepts = ["red hawk", "barn owl"]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "in"
        folder.mkdir()
        rng = np.random.RandomState(0)
        for i in range(args.images):
            Image.fromarray((rng.rand(240, 320, 3) * 255).astype(np.uint8)).save(folder / f"{i:05d}.jpg")
        images = find_images([folder])
        loc = zf.Localizer.from_pretrained(args.model, device=args.device, cache_dir=Path(tmp) / "cache")
        loc.encode_text(concepts)  # the text cache is warm for every engine
        chunks = [images[i:i + args.batch_size] for i in range(0, len(images), args.batch_size)]
        loc.encode_image([load_image(p)[0] for p in chunks[0]])  # warm-up
        _, forward = timed(lambda: [loc.encode_image([load_image(p)[0] for p in c]) for c in chunks])
        _, local = timed(lambda: run_batch(loc, images, Path(tmp) / "local", concepts,
                                           batch_size=args.batch_size, progress=False))
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        _, start = timed(lambda: ray.init(address=args.ray_address, include_dashboard=False, log_to_driver=False))
        options = RayOptions(address=args.ray_address, workers=args.workers, gpus_per_worker=args.gpus_per_worker)
        try:
            _, on_ray = timed(lambda: run_batch(loc, images, Path(tmp) / "ray", concepts, batch_size=args.batch_size,
                                                progress=False, engine="ray", ray=options))
        finally:
            ray.shutdown()
    n = len(images)
    print(f"model {args.model}, device {args.device}, {n} images of 320x240, batch size {args.batch_size}, "
          f"{args.workers} Ray worker(s) with {args.gpus_per_worker} GPU(s) each")
    print(f"{'':<22}{'seconds':>9}{'images/s':>10}{'x forward':>11}")
    for name, seconds in (("plain forward", forward), ("batch --engine local", local),
                          ("batch --engine ray", on_ray)):
        print(f"{name:<22}{seconds:>9.2f}{n / seconds:>10.2f}{forward / seconds:>11.3f}")
    print(f"Ray start (ray.init) {start:.1f} s; Ray adds {start + on_ray - local:.1f} s over the local engine "
          f"for these {n} images")


if __name__ == "__main__":
    main()
