"""Where the command line's wall time goes, as ratios to `python -c "import torch"` in the same run.

    python benchmarks/bench_startup.py [--repeat 2] [--skip-importtime]

Every command runs in a fresh subprocess, the commands round robin, best of --repeat runs
(peak RSS from wait4).
`locate` on the toy model is then split into phases by a small driver that prints a
timestamp after each stage (interpreter start, import torch, import open_clip and what it
pulls, the rest of zsfinercam, model load); work ends at the last line of output and
shutdown is the time from that line to the process's exit. Last, `-X importtime` on the
real `locate` command names the heavy packages it imports and who imports them.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMAGE = ROOT / "examples" / "bird.png"
CONCEPT = "red-headed blue-tailed striped-winged bird"
HEAVY = ("torch", "open_clip", "torchvision", "torch._dynamo", "sympy", "transformers", "timm", "cv2",
         "scipy", "ray", "gradio", "safetensors", "huggingface_hub", "PIL", "numpy", "click")

# The driver runs `zsfinercam locate` in-process, printing "@phase NAME TIME" on stderr after each stage.
DRIVER = r"""
import sys, time
def mark(name):
    print(f"@phase {name} {time.time():.6f}", file=sys.stderr, flush=True)
mark("python start")
import torch; mark("import torch")
import open_clip; mark("import open_clip")
import zsfinercam.cli as cli; from zsfinercam.localizer import Localizer; mark("import zsfinercam")
load = Localizer.from_pretrained.__func__
def timed(cls, *args, **kwargs):
    out = load(cls, *args, **kwargs); mark("model load"); return out
Localizer.from_pretrained = classmethod(timed)
cli.main()  # as the console command does: arguments from sys.argv
"""


def commands(out: str) -> list[tuple[str, list[str]]]:
    """(label, argv) of each command timed, the baseline first."""
    z = [sys.executable, "-m", "zsfinercam"]
    return [
        ("import torch (baseline)", [sys.executable, "-c", "import torch"]),
        ("python -c pass", [sys.executable, "-c", "pass"]),
        ("--help", [*z, "--help"]),
        ("--version", [*z, "--version"]),
        ("locate --help", [*z, "locate", "--help"]),
        ("prompts", [*z, "prompts"]),
        ("usage error (missing image)", [*z, "locate", "no-such-image.png", "bird"]),
        ("usage error (misspelt --vocab)", [*z, "locate", str(IMAGE), CONCEPT, "--vocab", "cub2000", "--out", out]),
        ("models", [*z, "models"]),
        ("locate (toy)", [*z, "locate", str(IMAGE), CONCEPT, "--out", out]),
    ]


def run(argv: list[str]) -> dict:
    """Wall seconds, peak RSS (MB), exit code, and arrival time of each output line."""
    start = time.time()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=ROOT, env=_env())
    lines = [(time.time(), line.decode(errors="replace").rstrip()) for line in proc.stdout]
    _, status, usage = os.wait4(proc.pid, 0)
    end = time.time()
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {"start": start, "end": end, "wall": end - start, "rss_mb": usage.ru_maxrss / 1024,
            "code": proc.returncode, "lines": lines}


def _env() -> dict:
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}".rstrip(os.pathsep))
    env.pop("ZSFINERCAM_DEBUG", None)
    return env


def phases(out: str, repeat: int) -> dict[str, float]:
    """Seconds of each phase of `locate` in its fastest run (see the module docstring)."""
    argv = [sys.executable, "-c", DRIVER, "locate", str(IMAGE), CONCEPT, "--out", out]
    best: dict[str, float] = {}
    for _ in range(repeat):
        found: dict[str, float] = {}
        r = run(argv)
        if r["code"] != 0:
            raise SystemExit("the phase driver failed:\n" + "\n".join(t for _, t in r["lines"]))
        marks = [("spawn", r["start"])]
        marks += [(m.group(1), float(m.group(2))) for _, t in r["lines"] if (m := re.match(r"@phase (.+) ([\d.]+)$", t))]
        last_output = max(t for t, text in r["lines"] if not text.startswith("@phase"))
        marks += [("work", last_output), ("interpreter shutdown", r["end"])]
        found = {name: b - a for (_, a), (name, b) in zip(marks, marks[1:])}
        found["total"] = r["wall"]
        if not best or found["total"] < best["total"]:
            best = found
    return best


def importtime(out: str) -> list[tuple[str, float, str]]:
    """(module, cumulative seconds, import chain) of the heavy packages `locate` imports."""
    argv = [sys.executable, "-X", "importtime", "-m", "zsfinercam", "locate", str(IMAGE), CONCEPT, "--out", out]
    r = run(argv)
    rows = []  # (depth, name, cumulative us), in importtime's order: children before their parent
    for _, text in r["lines"]:
        m = re.match(r"import time:\s+\d+ \|\s+(\d+) \|( *)(.*)$", text)
        if m:
            indent = len(m.group(2)) - 1
            rows.append((indent // 2, m.group(3).strip(), int(m.group(1))))
    result = []
    for name in HEAVY:
        hit = next((i for i, (_, n, _) in enumerate(rows) if n == name), None)
        if hit is None:
            result.append((name, 0.0, "not imported"))
            continue
        chain, depth = [], rows[hit][0]
        for d, n, _ in rows[hit + 1:]:
            if d < depth:
                chain.append(n)
                depth = d
        result.append((name, rows[hit][2] / 1e6, " <- ".join(chain[:6]) or "(top level)"))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2, help="Runs per command (median).")
    parser.add_argument("--skip-importtime", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as out:
        runs: dict[str, list[dict]] = {}
        for _ in range(args.repeat):  # round robin, so a burst of load elsewhere hits every command alike
            for label, argv in commands(out):
                runs.setdefault(label, []).append(run(argv))
        table = [(label, min(r["wall"] for r in rs), max(r["rss_mb"] for r in rs), rs[-1]["code"])
                 for label, rs in runs.items()]
        base = table[0][1]
        print(f"# {sys.executable}, {os.cpu_count()} CPUs, best of {args.repeat} runs (round robin); "
              f"import torch = {base:.2f} s")
        print(f"{'command':<32} {'seconds':>8} {'x torch':>8} {'peak MB':>8} {'exit':>5}")
        for label, wall, rss, code in table:
            print(f"{label:<32} {wall:8.2f} {wall / base:8.2f} {rss:8.0f} {code:5d}")
        print("\n# locate (toy) by phase")
        print(f"{'phase':<32} {'seconds':>8} {'x torch':>8}")
        for name, seconds in phases(out, args.repeat).items():
            print(f"{name:<32} {seconds:8.2f} {seconds / base:8.2f}")
        if not args.skip_importtime:
            print("\n# heavy imports of locate (toy), -X importtime (cumulative; inflated by the tracing)")
            for name, seconds, chain in importtime(out):
                print(f"{name:<16} {seconds:7.2f} s  {chain}")


if __name__ == "__main__":
    main()
