"""Benchmark of the fast path; the same as `zsfinercam bench` (see --help for the options).

    python benchmarks/bench_finercam.py --sizes 224,448 --ks 1,16,64 --json bench.json
"""
from __future__ import annotations

import sys
from pathlib import Path


def main() -> None:
    root = Path(__file__).resolve().parents[1]
    if (root / "zsfinercam").is_dir() and str(root) not in sys.path:
        sys.path.insert(0, str(root))  # run from a checkout without installing
    from zsfinercam.cli.bench import bench

    bench.main(args=sys.argv[1:], prog_name="bench_finercam.py")


if __name__ == "__main__":
    main()
