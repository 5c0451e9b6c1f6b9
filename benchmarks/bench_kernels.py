"""Torch vs Triton maps for every CAM base: time and peak memory on CUDA, correctness on CPU.

    python benchmarks/bench_kernels.py [--sizes 224,448] [--maps 1,16,64] [--batches 1,8] [--rounds 20]
                                       [--width 768 --heads 12 --patch 16]

The maps step alone (`CamBase.maps`: gradients -> ReLU'd and min-max-normalised maps), on
random pooling-attention records of a ViT's shape (`zsfinercam.testing.attention`; one CLS
query, width D, H heads, a (size / patch)^2 grid; ViT-B/16 by default, ViT-L/14 at 518 is
`--sizes 518 --width 1024 --heads 16 --patch 14`, the 37x37 grid of issue 21's memory target).
Grad-CAM gets channel weights of the same size. Rows, per base, size, M and B: the median
time over rounds (CUDA events) and the peak memory above the inputs, for impl "torch" and
"triton", their ratios, and each Triton row against Grad-CAM's Triton row of the same shape
(targets: HiResCAM <= 1.05x Grad-CAM's time; Layer-CAM at M = 64, 37x37, D = 1024 <= 1.2x its
peak memory).

On a machine without CUDA it times nothing: it re-runs itself under Triton's interpreter
(TRITON_INTERPRET=1) and checks, at small sizes, that every base's Triton maps equal its torch
maps, and says so.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CPU_CASES = ((1, 1, (7, 9)), (2, 16, (7, 9)), (1, 4, (37, 37)))  # (B, M, grid): the interpreter is slow


def main(argv: list[str] | None = None) -> None:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="224,448", help="image sizes (comma list)")
    parser.add_argument("--maps", default="1,16,64", help="maps per image M (comma list)")
    parser.add_argument("--batches", default="1,8", help="images per call B (comma list)")
    parser.add_argument("--width", type=int, default=768, help="D")
    parser.add_argument("--heads", type=int, default=12, help="H")
    parser.add_argument("--patch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args(argv)
    import torch

    if torch.cuda.is_available():
        return bench_cuda(args)
    if os.environ.get("TRITON_INTERPRET") != "1":  # must be set before triton is imported: a fresh process
        env = {**os.environ, "TRITON_INTERPRET": "1"}
        sys.exit(subprocess.run([sys.executable, __file__, *(argv or sys.argv[1:])], env=env).returncode)
    check_cpu(args)


def inputs(base, batch: int, maps: int, grid: tuple[int, int], args, device):
    """(the base's gradients, patches) for one shape."""
    import torch

    from zsfinercam.core.bases.base import TokenGradients
    from zsfinercam.testing.attention import random_attention

    record, grad, patches = random_attention(batch, maps, 1, args.heads, args.width // args.heads, grid, 1,
                                             args.width, device=device)
    if base.token_gradients:
        return TokenGradients(record, grad), patches
    return 1e-3 * torch.randn(batch, maps, args.width, device=device), patches


def check_cpu(args) -> None:
    import torch

    from zsfinercam.core.bases import get_base, list_bases

    print("CPU, no CUDA: correctness only, in Triton's interpreter (TRITON_INTERPRET=1); no timings, no memory.")
    print(f"{'base':<10} {'B':>2} {'M':>3} {'grid':>6}  max |triton - torch| / max (raw, norm)")
    worst = 0.0
    for name in list_bases():
        base = get_base(name)
        for batch, maps, grid in CPU_CASES:
            gradients, patches = inputs(base, batch, maps, grid, args, "cpu")
            got = base.maps(gradients, patches, impl="triton")
            want = base.maps(gradients, patches, impl="torch")
            diffs = [float((x - y).abs().max() / y.abs().max()) for x, y in zip(got, want)]
            worst = max(worst, *diffs)
            print(f"{name:<10} {batch:>2} {maps:>3} {grid[0]:>2}x{grid[1]:<3}  {diffs[0]:.1e}, {diffs[1]:.1e}")
    print(f"D={args.width}, H={args.heads}, float32; worst {worst:.1e}: "
          f"{'equal to 1e-5' if worst <= 1e-5 else 'NOT equal to 1e-5'}; torch {torch.__version__}")
    if worst > 1e-5:
        sys.exit(1)


def bench_cuda(args) -> None:
    import torch

    from zsfinercam.core.bases import get_base, list_bases

    device = torch.device("cuda")
    rows = {}
    for size in _ints(args.sizes):
        grid = (size // args.patch,) * 2
        for batch in _ints(args.batches):
            for maps in _ints(args.maps):
                for name in list_bases():
                    base = get_base(name)
                    gradients, patches = inputs(base, batch, maps, grid, args, device)
                    for impl in ("torch", "triton"):
                        rows[size, batch, maps, name, impl] = _measure(
                            lambda: base.maps(gradients, patches, impl=impl), args.rounds, device)
    print(f"{'size':>4} {'B':>2} {'M':>3} {'base':<9} {'torch us':>9} {'triton us':>9} {'speed-up':>8} "
          f"{'torch MiB':>9} {'triton MiB':>10} {'t / Grad-CAM t':>14} {'mem / Grad-CAM':>14}")
    for (size, batch, maps, name, impl), (t, mem) in rows.items():
        if impl == "torch":
            continue
        t_torch, mem_torch = rows[size, batch, maps, name, "torch"]
        t_grad, mem_grad = rows[size, batch, maps, "gradcam", "triton"]
        print(f"{size:>4} {batch:>2} {maps:>3} {name:<9} {t_torch:9.1f} {t:9.1f} {t_torch / t:7.2f}x "
              f"{mem_torch:9.2f} {mem:10.2f} {t / t_grad:13.2f}x {mem / max(mem_grad, 1e-9):13.2f}x")
    print(f"{torch.cuda.get_device_name(device)}, D={args.width}, H={args.heads}, patch {args.patch}, float32 "
          f"inputs, median of {args.rounds} rounds; torch {torch.__version__}")


def _measure(call, rounds: int, device) -> tuple[float, float]:
    """(median microseconds, peak MiB allocated above what was allocated before) of `call`."""
    import torch

    call()  # warm-up: compiles the kernels
    times = []
    for _ in range(rounds):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        call()
        end.record()
        torch.cuda.synchronize(device)
        times.append(start.elapsed_time(end) * 1e3)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    call()
    torch.cuda.synchronize(device)
    return statistics.median(times), (torch.cuda.max_memory_allocated(device) - before) / 2**20


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


if __name__ == "__main__":
    main()
