"""What a `compare` column costs once the image is encoded, as a ratio to one trunk pass.

    python benchmarks/bench_compare.py [--model ViT-B-16] [--columns 4,8,16] [--rounds 3]

Random weights for open_clip names (nothing is downloaded); `--model toy` uses the embedded
model. Text is encoded once before timing (warm cache), as when a user adds a column.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path


def best(fn, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    root = Path(__file__).resolve().parents[1]
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    import numpy as np
    import torch

    import zsfinercam as zf

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-B-16")
    parser.add_argument("--columns", default="4,8,16")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.manual_seed(0)
    loc = zf.Localizer.from_pretrained(args.model, device=args.device, cache_dir=None)
    image = (np.random.RandomState(0).rand(224, 224, 3) * 255).astype(np.uint8)
    columns = [int(c) for c in args.columns.split(",")]
    concepts = [f"concept number {i}" for i in range(max(columns) + 1)]
    loc.encode_text(concepts)  # warm text cache
    trunk = best(lambda: loc.encode_image(image), args.rounds)
    feats = loc.encode_image(image)
    loc.compare(feats, concepts[:2])  # builds the image's Jacobian once
    print(f"model {args.model}, device {args.device}: one trunk pass {trunk * 1e3:.1f} ms")
    per = []
    for k in columns:
        t = best(lambda: loc.compare(feats, concepts[:k]), args.rounds)
        g = best(lambda: loc.compare(feats, concepts[:k]).grid(), args.rounds)
        per.append(g / k)
        print(f"compare, {k:>3} columns on cached features: maps {t * 1e3:7.1f} ms = {t / trunk:.3f}x a trunk "
              f"pass; with the grid image {g * 1e3:7.1f} ms = {g / trunk:.3f}x ({g / k / trunk:.4f}x per column)")
    print(f"median per column: {statistics.median(per) / trunk:.4f}x a trunk pass")


if __name__ == "__main__":
    main()
