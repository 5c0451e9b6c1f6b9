"""Speed and memory of the fast path against a plain forward and pytorch-grad-cam (docs/design.md, "Measuring speed").

All methods run in one process, interleaved: every round runs each once, the first round is a
warm-up, medians are reported.
- floor: the backend's plain forward of its image tower (`Backend.encode_pixels`, what the model's
  own `encode_image` gives) at the run size, no grad, same autocast as our trunk (bfloat16 on
  CUDA, none on CPU);
- ours: `Localizer.locate_many(image(s), K concepts, vs=references)` with the Grad-CAM base (`BASE`,
  the baseline's), text embeddings warm;
- gradcam: pytorch-grad-cam `FinerCAM`, one call per concept (how its users run it), on
  logits = logit_scale * normalize(encode_pixels(x)) @ T^T, hooked on the backend's
  `target_module()`, same autocast as the floor. By default a few calls per round are timed
  and the per-concept median is multiplied by K (marked extrapolated); `gradcam_full` times
  all K calls;
- jacobian: the first `locate_many` on fresh cached features (it builds the per-image Jacobian);
- cached: later calls on those features, text warm; cached+text: prompts never seen before,
  so the text tower runs (the default template set, and a single template).
Peak memory above the loaded model during one call of each method, after a warm-up call. CUDA:
max_memory_allocated during the call minus memory_allocated before it (the timed rounds were
the warm-up). CPU: a memory child (a fresh process) per method and configuration, with glibc's
mmap threshold fixed at 128 KiB so large blocks go back to the system when freed (RSS then follows live
memory instead of the allocator's history), loads the model, prepares inputs and text,
imports everything, then 1 + MEMORY_WARM_CALLS times: returns freed heap (malloc_trim),
resets the peak RSS (/proc/self/clear_refs), runs the call and takes peak RSS minus RSS
before it. The median of the calls after the first is reported; the first (cold: code pages
of libraries touched for the first time, one-time buffers) is kept as *_cold_mb.
"""
from __future__ import annotations

import ctypes
import dataclasses
import gc
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from .report import evaluate_targets
from ..testing.reference import ZeroShotHead, finer_cam

SINGLE_TEMPLATE = ("a photo of a {}.",)
BASE = "gradcam"  # our maps are timed with the base of the pytorch-grad-cam baseline (the others: bench_bases.py)
MEMORY_WARM_CALLS = 3  # CPU memory: median over this many calls after the cold one (RSS is noisy)

@dataclasses.dataclass(frozen=True)
class BenchConfig:
    """What to measure. `batches` / `rounds` None pick device defaults: B=(1,) and 3 rounds on
    CPU (the default grid then takes ~5 min on 2 idle cores); B=(1, 8), 10 rounds on CUDA."""

    model: str = "ViT-B-16"
    pretrained: str | None = None  # None = random weights (speed does not depend on them)
    model_config: str | None = None
    backend: str = "open_clip"  # registry name, as `Localizer.from_pretrained(backend=...)`
    sizes: tuple[int, ...] = (224, 448)
    ks: tuple[int, ...] = (1, 4, 16, 64)
    batches: tuple[int, ...] | None = None
    rounds: int | None = None
    device: str = "auto"
    gradcam: bool = True
    gradcam_calls: int = 1  # pytorch-grad-cam calls timed per round and (size, B), extrapolated to K
    gradcam_full: bool = False  # time all K calls instead
    memory: bool = True
    threads: int | None = None  # torch.set_num_threads during the run; None leaves torch's default
    references: int = 3  # explicit references for every concept (keeps the objective count at K)
    kernel: str = "auto"  # the maps' implementation, as `Localizer.from_pretrained(kernel=...)`

    def __post_init__(self) -> None:
        for name in ("sizes", "ks", "batches"):
            value = getattr(self, name)
            if value is not None or name != "batches":
                if not value or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in value):
                    raise ValueError(f"expected {name} to be a non-empty tuple of positive ints, got {value!r}")
                object.__setattr__(self, name, tuple(value))
        for name in ("rounds", "threads", "gradcam_calls", "references"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"expected {name} to be a positive int or None, got {value!r}")
        if self.device not in ("auto", "cpu", "cuda") and not str(self.device).startswith("cuda:"):
            raise ValueError(f"expected device auto, cpu or cuda, got {self.device!r}")


@dataclasses.dataclass(eq=False)
class _Setup:
    """One run size: the localizer, the plain model, inputs, concept names, cached features per B."""

    size: int
    loc: object
    head: nn.Module
    pixels: dict
    images: list
    warm: list
    refs: list
    fresh: object  # iterator over concept names never encoded before
    feats: dict

    def image_arg(self, batch: int):
        return self.images[0] if batch == 1 else self.images[:batch]

    def new_names(self, k: int) -> list[str]:
        return list(itertools.islice(self.fresh, k))



class _PlainImage(nn.Module):
    """x -> `backend.encode_pixels(x)`: the backend's plain forward of its image tower (which autocasts
    as the trunk does). Holds the backend's modules, so `zero_grad` reaches their parameters."""

    def __init__(self, backend):
        super().__init__()
        self.backend, self.held = backend, nn.ModuleList(backend.modules())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backend.encode_pixels(x)


def _fresh_names(pool: list[str]):
    for j in itertools.count():
        yield from (name if j == 0 else f"{name} {j}" for name in pool)


def _prepare(cfg: BenchConfig, size: int, device: torch.device, batches, cached: bool) -> _Setup:
    from ..localizer import Localizer
    from ..concepts.vocab import load_vocab

    loc = Localizer.from_pretrained(cfg.model, cfg.pretrained, model_config=cfg.model_config, backend=cfg.backend,
                                    device=str(device), image_size=size, cache_dir=None, kernel=cfg.kernel)
    return setup(loc, load_vocab("imagenet1k"), size, batches, k=max(cfg.ks), references=cfg.references,
                 cached=cached)


def setup(loc, pool: list[str], size: int, batches, *, k: int, references: int, cached: bool) -> _Setup:
    """Inputs for one run size on a loaded Localizer (any backend): `size` x `size` random images,
    pixels per batch size, the first `k` names of `pool` as concepts and the next `references` as
    references (their head rows warm), and the plain model as `head` (the floor and pytorch-grad-cam's)."""
    warm, refs = pool[:k], pool[k:k + references]
    text = loc.head(warm + refs)  # text embeddings now in the in-memory cache (or a probe's rows)
    if loc.backend.tokenizer is not None:  # a text tower: warm the single-template prompts too
        loc.encode_text(refs, list(SINGLE_TEMPLATE))
    rng = np.random.RandomState(size)
    images = [(rng.rand(size, size, 3) * 255).astype(np.uint8) for _ in range(max(batches))]
    pixels = {b: loc.pixels(images[:b]) for b in batches}
    head = ZeroShotHead(_PlainImage(loc.backend), text, loc.backend.logit_scale, None)
    s = _Setup(size, loc, head, pixels, images, warm, refs, _fresh_names(pool[k + references:]), {})
    if cached:
        s.feats = {b: loc.encode_image(s.image_arg(b)) for b in batches}
    return s


def _floor(s: _Setup, b: int):
    with torch.inference_mode():
        return s.head.embed(s.pixels[b])


def _ours(s: _Setup, b: int, k: int):
    return s.loc.locate_many(s.image_arg(b), s.warm[:k], vs=s.refs, base=BASE)


def _gradcam(s: _Setup, b: int, concept: str):
    """One pytorch-grad-cam FinerCAM call (maps at the input size): one concept in each of the b images,
    hooked on the backend's `target_module()` during its plain forward."""
    names = s.warm + s.refs
    pair = (names.index(concept), [names.index(r) for r in s.refs])
    return finer_cam(s.head, s.loc.backend.target_module(), s.pixels[b], [pair] * b, grid=s.loc.config.grid_size,
                     prefix=s.loc.config.num_prefix_tokens, batch_first=None, on_grid=False)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _round(cfg: BenchConfig, setups, batches, samples, device) -> None:
    """Every method once per (size, B, K); samples None = warm-up (one pytorch-grad-cam call)."""
    def timed(key, fn) -> None:
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        if samples is not None:
            samples[key].append(time.perf_counter() - start)

    for s, b in itertools.product(setups, batches):
        timed((s.size, b, 0, "floor"), lambda: _floor(s, b))
        calls = 0 if not cfg.gradcam else 1 if samples is None else 0 if cfg.gradcam_full else cfg.gradcam_calls
        for i in range(calls):  # warm-up: one call; full: timed per K below
            timed((s.size, b, 0, "gradcam1"), lambda: _gradcam(s, b, s.warm[i % len(s.warm)]))
        feats = dataclasses.replace(s.feats[b], jacobian=None, output_jacobian=None)
        timed((s.size, b, 0, "jacobian"), lambda: s.loc.locate_many(feats, s.warm[:1], vs=s.refs, base=BASE))
        for k in cfg.ks:
            timed((s.size, b, k, "ours"), lambda: _ours(s, b, k))
            if cfg.gradcam and cfg.gradcam_full and samples is not None:
                timed((s.size, b, k, "gradcam"), lambda: [_gradcam(s, b, c) for c in s.warm[:k]])
            timed((s.size, b, k, "cached"), lambda: s.loc.locate_many(feats, s.warm[:k], vs=s.refs, base=BASE))
            new = s.new_names(k)
            timed((s.size, b, k, "cached_text"), lambda: s.loc.locate_many(feats, new, vs=s.refs, base=BASE))
            new = s.new_names(k)
            timed((s.size, b, k, "cached_text1"),
                  lambda: s.loc.locate_many(feats, new, vs=s.refs, base=BASE,
                                            templates=list(SINGLE_TEMPLATE)))


# memory -----------------------------------------------------------------------------------
def _call(s: _Setup, method: str, b: int, k: int):
    return _floor(s, b) if method == "floor" else _ours(s, b, k) if method == "ours" else _gradcam(s, b, s.warm[0])


def _memory(cfg: BenchConfig, setups, batches, device, log) -> dict:
    """(warm, cold) peak MB above the loaded model per (size, B, K, method); K = 0 where it does not
    apply. On CUDA the timed rounds warmed everything: warm only."""
    out = {}
    for s, b in itertools.product(setups, batches):
        keys = [(0, "floor")] + [(0, "gradcam")] * cfg.gradcam + [(k, "ours") for k in cfg.ks]
        for k, method in keys:
            log(f"memory: {method} size={s.size} B={b}" + (f" K={k}" if k else ""))
            if device.type == "cuda":
                gc.collect()
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
                base = torch.cuda.memory_allocated(device)
                _call(s, method, b, k)
                torch.cuda.synchronize(device)
                out[(s.size, b, k, method)] = ((torch.cuda.max_memory_allocated(device) - base) / 2**20, None)
            else:
                out[(s.size, b, k, method)] = _child_peak_mb(cfg, s.size, b, k, method, log)
    return out


def _child_peak_mb(cfg: BenchConfig, size: int, b: int, k: int, method: str, log) -> tuple | None:
    """(warm, cold) peak MB of one call, measured in a fresh process."""
    spec = {**dataclasses.asdict(cfg), "sizes": [size], "ks": [max(k, 1)], "batches": [b], "device": "cpu"}
    root = str(Path(__file__).resolve().parents[1])
    env = {"MALLOC_MMAP_THRESHOLD_": "131072", **os.environ,
           "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    done = subprocess.run([sys.executable, "-m", "zsfinercam.bench.run", "--measure-memory", method, json.dumps(spec)],
                          capture_output=True, text=True, env=env)
    if done.returncode != 0 or not done.stdout.strip():
        log(f"memory child failed ({method} size={size} B={b}): {done.stderr.strip()[-400:]}")
        return None
    found = json.loads(done.stdout.strip().splitlines()[-1])
    return found["peak_mb"], found["cold_peak_mb"]


def _status_kb(name: str) -> int:
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(name + ":"))
    return int(line.split()[1])


def _measure_memory(method: str, spec: dict) -> dict:
    """Child side of the CPU memory measurement (see the module docstring). Linux only."""
    import pytorch_grad_cam  # noqa: F401 - imported before the baseline, like everything else
    import timm.layers  # noqa: F401

    cfg = BenchConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in spec.items()})
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    s = _prepare(cfg, cfg.sizes[0], torch.device("cpu"), cfg.batches, cached=False)
    peaks = []
    for _ in range(1 + MEMORY_WARM_CALLS):  # first call cold, then warm (code paged in, buffers made)
        gc.collect()
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)  # freed heap back to the system: RSS ~ live memory
        except (OSError, AttributeError):
            pass  # not glibc: freed heap stays in the baseline
        base = _status_kb("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # peak RSS := current RSS
        _call(s, method, cfg.batches[0], cfg.ks[0])
        peaks.append((_status_kb("VmHWM") - base) / 1024)
    return {"peak_mb": statistics.median(peaks[1:]), "cold_peak_mb": peaks[0], "peaks_mb": peaks}


# results ----------------------------------------------------------------------------------
def ratio(a, b) -> float | None:
    return a / b if a is not None and b else None


def _row(cfg: BenchConfig, size: int, b: int, k: int, samples, memory) -> dict:
    keys = {"floor": 0, "ours": k, "gradcam1": 0, "gradcam": k, "jacobian": 0, "cached": k, "cached_text": k,
            "cached_text1": k}
    raw = {key: samples.get((size, b, kk, key), []) for key, kk in keys.items()}
    med = {key: statistics.median(v) if v else None for key, v in raw.items()}
    per_concept = None if cfg.gradcam_full else med["gradcam1"]
    gradcam = med["gradcam"] if cfg.gradcam_full else per_concept * k if per_concept is not None else None
    floor, ours = med["floor"], med["ours"]
    row = {"size": size, "batch": b, "k": k, "floor_s": floor, "ours_s": ours,
           "ours_over_floor": ratio(ours, floor), "gradcam_s": gradcam, "gradcam_per_concept_s": per_concept,
           "gradcam_extrapolated": gradcam is not None and not cfg.gradcam_full,
           "speedup_vs_gradcam": ratio(gradcam, ours), "jacobian_s": med["jacobian"]}
    for key in ("cached", "cached_text", "cached_text1"):
        row.update({f"{key}_s": med[key], f"{key}_over_floor": ratio(med[key], floor)})
    for m in ("floor", "ours", "gradcam"):
        warm, cold = memory.get((size, b, k if m == "ours" else 0, m)) or (None, None)
        row.update({f"mem_{m}_mb": warm, f"mem_{m}_cold_mb": cold})
    row["mem_ours_over_floor"] = ratio(row["mem_ours_mb"], row["mem_floor_mb"])
    row["samples"] = raw
    return row


def run_benchmark(cfg: BenchConfig, log: Callable[[str], None] | None = None) -> dict:
    """Run the whole grid; returns a JSON-ready report {"meta", "rows", "targets"}.

    The torch thread count is restored afterwards.
    """
    from ..localizer import resolve_device

    log = log or (lambda message: None)
    device = resolve_device(cfg.device)
    threads = torch.get_num_threads()
    try:
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        return _run(cfg, device, log)
    finally:
        torch.set_num_threads(threads)


def _run(cfg: BenchConfig, device: torch.device, log) -> dict:
    batches = cfg.batches or ((1, 8) if device.type == "cuda" else (1,))
    rounds = cfg.rounds or (10 if device.type == "cuda" else 3)
    started = time.perf_counter()
    setups = []
    for size in cfg.sizes:
        log(f"loading {cfg.model} at {size}")
        setups.append(_prepare(cfg, size, device, batches, cached=True))
    samples, cpu = defaultdict(list), _cpu_seconds()
    for r in range(rounds + 1):
        log("warm-up round" if r == 0 else f"round {r}/{rounds}")
        _round(cfg, setups, batches, samples if r else None, device)
    others = _others_share(cpu, _cpu_seconds())
    memory = _memory(cfg, setups, batches, device, log) if cfg.memory else {}
    rows = [_row(cfg, size, b, k, samples, memory) for size in cfg.sizes for b in batches for k in cfg.ks]
    meta = _meta(cfg, setups[0].loc, device, batches, rounds)
    meta.update(seconds=time.perf_counter() - started, other_cpu_share=others)
    return {"meta": meta, "rows": rows, "targets": evaluate_targets(rows, meta["default_templates"])}


def _cpu_seconds() -> tuple[float, float, float] | None:
    """(wall, busy CPU seconds of the whole machine incl. steal, of this process); None off Linux."""
    try:
        ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None
    own = os.times()
    busy = sum(ticks) - ticks[3] - ticks[4]  # all but idle and iowait
    return time.perf_counter(), busy / os.sysconf("SC_CLK_TCK"), own.user + own.system


def _others_share(before, after) -> float | None:
    """Share of all CPUs that other processes (or the hypervisor) used between two readings."""
    if before is None or after is None or after[0] <= before[0]:
        return None
    other = (after[1] - before[1]) - (after[2] - before[2])
    return max(0.0, other / ((after[0] - before[0]) * (os.cpu_count() or 1)))


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
        return next(x.split(":", 1)[1].strip() for x in cpuinfo if x.startswith("model name"))
    except (OSError, StopIteration):
        import platform

        return platform.processor() or platform.machine()


def _meta(cfg: BenchConfig, loc, device, batches, rounds) -> dict:
    import open_clip

    from ..concepts.vocab import DEFAULT_TEMPLATES, load_templates

    templates = loc.config.default_templates or load_templates(DEFAULT_TEMPLATES)
    return {"config": {**dataclasses.asdict(cfg), "batches": list(batches), "rounds": rounds},
            "device": str(device), "device_name": device_name(device), "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(), "torch": torch.__version__, "open_clip": open_clip.__version__,
            "autocast": str(loc.backend.autocast_dtype), "default_templates": len(templates),
            "single_template": SINGLE_TEMPLATE[0], "references": cfg.references,
            "memory_method": "CUDA max_memory_allocated" if device.type == "cuda" else
            f"peak RSS in a child process, median of {MEMORY_WARM_CALLS} calls after a cold one"}


if __name__ == "__main__" and sys.argv[1:2] == ["--measure-memory"]:
    print(json.dumps(_measure_memory(sys.argv[2], json.loads(sys.argv[3]))))
