"""Cost of the CAM bases (issue 16) against a plain forward, measured in one run.

    python benchmarks/bench_bases.py [--model ViT-B-16] [--size 224] [--k 16] [--threads 2] [--rounds 5]

Random weights (speed does not depend on them). Rows, each the fastest over rounds of one
call, divided by the fastest floor measured in the same rounds (methods interleaved,
so a busy machine slows all of them alike); wall time and this process's CPU time (the
steadier of the two on a shared, oversubscribed machine), and the ratio of matrix-product
FLOPs (torch's FlopCounterMode; independent of the load, blind to elementwise work):

- floor: the model's own `encode_image` on the preprocessed pixels, no grad;
- fresh <base>: trunk (`engine.encode`) + `engine.maps` for K objectives, a fresh image;
- jacobian <base>: building the per-image Jacobian on cached features (once per image);
- cached <base>: `engine.maps` for K new text rows on cached features whose Jacobian exists
  (text encoding not included: see the last row);
- text: encoding K new single-template prompts (the text tower; the same for every base).

Targets (issue 16): fresh hirescam <= 1.05, fresh layercam reported (aim <= 1.3), cached <= 0.05.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REFERENCES = 3  # contrast references per objective


def main(argv: list[str] | None = None) -> None:
    root = Path(__file__).resolve().parents[1]
    if (root / "zsfinercam").is_dir() and str(root) not in sys.path:
        sys.path.insert(0, str(root))  # run from a checkout without installing
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="ViT-B-16")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    for name, value in run(args).items():
        print(f"{name:<22} {value}")


def run(args) -> dict[str, str]:
    import numpy as np
    import torch

    from zsfinercam.core import engine
    from zsfinercam.core.bases import list_bases
    from zsfinercam.io.images import to_pixels
    from zsfinercam.localizer import Localizer
    from zsfinercam.core.objectives import Objective

    loc = Localizer.from_pretrained(args.model, None, device="cpu", image_size=args.size, cache_dir=None)
    backend, cfg = loc.backend, loc.config
    image = (np.random.RandomState(0).rand(args.size, args.size, 3) * 255).astype(np.uint8)
    pixels = to_pixels([image], cfg.image_size, cfg.mean, cfg.std)
    k = args.k
    names = [f"concept {i}" for i in range(k + REFERENCES)]
    text = loc.encode_text(names, ["a photo of a {}."])
    objectives = [[Objective(i, tuple(range(k, k + REFERENCES))) for i in range(k)]]

    def fresh(base):
        stream, target, embedding, cache = engine.encode(backend, pixels)
        feats = engine.ImageFeatures(stream, target, embedding, cfg.grid_size, cfg.num_prefix_tokens, [image],
                                     ["bench"], "bench", cache=cache)
        return engine.maps(backend, feats, text, objectives, base=base)

    cached = loc.encode_image(image)

    def jacobian(base):
        feats = engine.ImageFeatures(cached.stream, cached.target, cached.embedding, cfg.grid_size,
                                     cfg.num_prefix_tokens, [image], ["bench"], "bench", cache=cached.cache)
        return engine.maps(backend, feats, text, [objectives[0][:1]], base=base, use_jacobian=True)

    new_rows = torch.nn.functional.normalize(torch.randn_like(text), dim=-1)
    counter = iter(range(10**9))
    calls = {"floor": lambda: _floor(backend, pixels)}
    for base in list_bases():
        calls[f"fresh {base}"] = lambda base=base: fresh(base)
        calls[f"jacobian {base}"] = lambda base=base: jacobian(base)
        calls[f"cached {base}"] = lambda base=base: engine.maps(backend, cached, new_rows, objectives, base=base,
                                                                use_jacobian=True)
    calls["text"] = lambda: loc.encode_text([f"new prompt {next(counter)}" for _ in range(k)], ["a photo of a {}."])
    wall = {name: [] for name in calls}
    cpu = {name: [] for name in calls}
    load_before = os.getloadavg()
    for round_ in range(args.rounds + 1):  # round 0 warms up (and builds the cached Jacobians)
        for name, call in calls.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            call()
            if round_:
                wall[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - start_cpu)
    flops = {name: _flops(call) for name, call in calls.items()}
    out = {"": "wall ratio (fastest, ms)        CPU-time ratio (fastest, ms)    matmul-FLOP ratio (GFLOP)"}
    for name in calls:
        cells = [f"{min(t[name]) / min(t['floor']):7.3f}x ({min(t[name]) * 1e3:8.1f} ms)" for t in (wall, cpu)]
        cells.append(f"{flops[name] / flops['floor']:7.3f}x ({flops[name] / 1e9:6.2f})")
        out[name] = "     ".join(cells)
    out["setup"] = (f"{args.model} random weights, {args.size}px, K={k}, {REFERENCES} references, "
                    f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    out["load average"] = (f"{load_before[0]:.2f} before, {os.getloadavg()[0]:.2f} after "
                           f"({os.cpu_count()} CPUs)")
    return out


def _flops(call) -> int:
    """Floating-point operations of one call, as torch's FlopCounterMode counts them (matrix products)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        call()
    return counter.get_total_flops()


def _floor(backend, pixels):
    import torch

    with torch.inference_mode():
        return backend.model.encode_image(pixels)


if __name__ == "__main__":
    main()
