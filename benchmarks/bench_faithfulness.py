"""Cost of per-map faithfulness against a plain forward, measured in one run.

    python benchmarks/bench_faithfulness.py [--model ViT-B-16] [--size 224] [--k 16] [--threads 2] [--rounds 1]

Random weights (speed does not depend on them). Rows, each the fastest over rounds of one call,
divided by the fastest floor measured in the same rounds (calls interleaved, so a busy machine
slows all of them alike); wall time and this process's CPU time (the steadier of the two on a
shared machine); then per concept (the ratio divided by K):

- floor: the tower's plain forward (`Backend.encode_pixels`, no grad);
- maps: the K Finer-CAM maps themselves (trunk and one backward, `engine.maps`), for scale;
- both: faithfulness of the K maps with deletion and insertion (`core.removal.faithfulness`), the default;
- deletion: the same with deletion alone (the "deletion" mode: near-full sequences at one level);
- insertion: both minus deletion (the short sequences), the split the issue asks for.

The last rows count the tokens the tower runs in each mode, in plain forwards' worth (a plain
forward runs prefix + N tokens), which the wall-time ratios should roughly follow: token work is
linear in the tokens here (attention is a small part at these lengths).

Targets (issue 24): both <= 2 plain forwards per concept (K = 16: <= 32x); the cheaper mode <= 0.5.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REFERENCES = 3  # contrast references per objective


OPTIONS = {"--model": ("ViT-B-16", str), "--size": (224, int), "--k": (16, int), "--threads": (2, int),
           "--rounds": (1, int)}  # flag: (default, type)


def main(argv: list[str] | None = None) -> None:
    root = Path(__file__).resolve().parents[1]
    if (root / "zsfinercam").is_dir() and str(root) not in sys.path:
        sys.path.insert(0, str(root))  # run from a checkout without installing
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for flag, (default, kind) in OPTIONS.items():
        parser.add_argument(flag, type=kind, default=default)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    print("\n".join(f"{name:<16} {value}" for name, value in run(args).items()))


def run(args) -> dict[str, str]:
    import numpy as np
    import torch

    from zsfinercam.core import engine, removal
    from zsfinercam.core.objectives import Objective
    from zsfinercam.localizer import Localizer

    loc = Localizer.from_pretrained(args.model, None, device="cpu", image_size=args.size, cache_dir=None)
    backend = loc.backend
    image = (np.random.RandomState(0).rand(args.size, args.size, 3) * 255).astype(np.uint8)
    feats = loc.encode_image(image)
    pixels = _pixels(loc, image)
    k = args.k
    text = loc.encode_text([f"concept {i}" for i in range(k + REFERENCES)], ["a photo of a {}."])
    objectives = [[Objective(i, tuple(range(k, k + REFERENCES))) for i in range(k)]]
    raw, _ = engine.maps(backend, feats, text, objectives, base=loc.options().base)
    maps = raw.flatten(2).numpy()

    def faith(mode):
        return removal.faithfulness(backend, pixels, text, objectives, maps, mode)

    calls = {"floor": lambda: _floor(backend, pixels),
             "maps": lambda: engine.maps(backend, loc.encode_image(image), text, objectives, base=loc.options().base),
             "both": lambda: faith("both"), "deletion": lambda: faith("deletion")}
    wall = {name: [] for name in calls}
    cpu = {name: [] for name in calls}
    load_before = os.getloadavg()
    _floor(backend, pixels)  # warm-up
    for _ in range(args.rounds):
        for name, call in calls.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            call()
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    for t in (wall, cpu):
        t["insertion"] = [max(b - d, 0.0) for b, d in zip(t["both"], t["deletion"])]
    out = {"": "wall ratio (fastest, s)   per concept     CPU-time ratio (fastest, s)   per concept"}
    for name in wall:
        ratio = [min(t[name]) / min(t["floor"]) for t in (wall, cpu)]
        cells = [f"{r:8.2f}x ({min(t[name]):7.2f} s)  {r / k:6.3f}x" for r, t in zip(ratio, (wall, cpu))]
        out[name] = "        ".join(cells)
    out.update(_token_counts(loc, k))
    weights = "embedded weights" if args.model == "toy" else "random weights"
    out["setup"] = (f"{args.model} {weights}, {args.size}px, K={k}, {REFERENCES} references, base "
                    f"{loc.options().base}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    out["load average"] = (f"{load_before[0]:.2f} before, {os.getloadavg()[0]:.2f} after ({os.cpu_count()} CPUs)")
    return out


def _token_counts(loc, k: int) -> dict[str, str]:
    """Tokens through the tower per mode, in plain forwards' worth, and per concept."""
    from zsfinercam.core import faithfulness as faith

    cfg = loc.config
    n = cfg.grid_size[0] * cfg.grid_size[1]
    prefix, plain = cfg.num_prefix_tokens, cfg.num_prefix_tokens + n
    sets = k + faith.DRAWS  # the maps' own sets and the shared random draws, per level
    insertion = sets * sum(prefix + c for c in faith.counts(n, faith.INSERTION_LEVELS)) / plain
    deletion = sets * sum(prefix + n - c for c in faith.counts(n, faith.DELETION_LEVELS)) / plain
    return {f"tokens {name}": f"{value:8.2f} forwards  {value / k:6.3f} per concept"
            for name, value in (("insertion", insertion), ("deletion", deletion), ("both", insertion + deletion))}


def _pixels(loc, image):
    from zsfinercam.io.images import to_pixels

    cfg = loc.config
    return to_pixels([image], cfg.image_size, cfg.mean, cfg.std)


def _floor(backend, pixels):
    import torch

    with torch.no_grad():
        return backend.encode_pixels(pixels)


if __name__ == "__main__":
    main()
