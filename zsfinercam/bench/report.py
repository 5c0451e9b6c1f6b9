"""Reporting for `zsfinercam bench`: the project's speed and memory targets, the fixed-width table, JSON."""
from __future__ import annotations

import os
from pathlib import Path

TARGET_B, TARGET_K = 1, 16
TARGETS = (  # (row key, limit or None = reported only, what, unit)
    ("ours_over_floor", 1.0, "16 concepts, one image: ours", "x a plain forward"),
    ("speedup_vs_gradcam", 40.0, "16 concepts: speed-up over pytorch-grad-cam FinerCAM", "x"),
    ("mem_ours_over_floor", 1.2, "16 concepts: peak memory above the model, ours", "x a plain forward's"),
    ("cached_over_floor", 0.05, "16 new prompts on a cached image, text warm", "x a plain forward"),
    ("cached_text_over_floor", None, "16 new prompts on a cached image with their text ({} templates)",
     "x a plain forward"),
    ("cached_text1_over_floor", None, "16 new prompts on a cached image with their text (1 template)",
     "x a plain forward"),
)



def evaluate_targets(rows: list[dict], default_templates: int | None = None) -> list[dict]:
    """The targets (TARGETS) at K=16, B=1 for every size measured: met True/False; None where not
    measured or reported only."""
    out = []
    for size in sorted({r["size"] for r in rows}):
        row = next((r for r in rows if (r["size"], r["batch"], r["k"]) == (size, TARGET_B, TARGET_K)), {})
        for key, limit, text, unit in TARGETS:
            value, higher = row.get(key), key.startswith("speedup")
            met = None if value is None or limit is None else (value >= limit if higher else value <= limit)
            goal = f"target {'>=' if higher else '<='} {limit}x" if limit is not None else "reported, no limit"
            note = " (pytorch-grad-cam extrapolated)" if higher and row.get("gradcam_extrapolated") else ""
            out.append({"target": key, "size": size, "value": value, "limit": limit, "met": met,
                        "text": f"{text.format(default_templates)} at {size}: {_fmt(value, 3)}{unit} ({goal}){note}"})
    return out


def _fmt(value, digits: int = 2) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if abs(value) < 1000 else f"{value:.0f}"


_COLUMNS = (("size", "size", 5, 0), ("B", "batch", 3, 0), ("K", "k", 3, 0), ("floor s", "floor_s", 8, 3),
            ("ours s", "ours_s", 8, 3), ("ours/fl", "ours_over_floor", 7, 2), ("gcam s", "gradcam_s", 9, 1),
            ("x faster", "speedup_vs_gradcam", 8, 1), ("jac s", "jacobian_s", 7, 3),
            ("cache s", "cached_s", 8, 4), ("/fl", "cached_over_floor", 6, 3),
            ("+txt s", "cached_text_s", 7, 3), ("/fl", "cached_text_over_floor", 6, 3),
            ("+txt1 s", "cached_text1_s", 7, 3), ("/fl", "cached_text1_over_floor", 6, 3),
            ("MB fl", "mem_floor_mb", 7, 0), ("MB ours", "mem_ours_mb", 7, 0), ("MB gcam", "mem_gradcam_mb", 7, 0))


def format_table(report: dict) -> str:
    """The rows as a fixed-width table, then a legend and one line per target."""
    lines = ["  ".join(f"{title:>{width}}" for title, _, width, _ in _COLUMNS)]
    for row in report["rows"]:
        cells = [str(row[key]) if digits == 0 and isinstance(row[key], int) else _fmt(row[key], digits)
                 for _, key, _, digits in _COLUMNS]
        cells[6] += "*" if row["gradcam_extrapolated"] else ""
        lines.append("  ".join(f"{text:>{col[2]}}" for text, col in zip(cells, _COLUMNS)))
    meta = report["meta"]
    others = meta.get("other_cpu_share")
    lines += ["", f"times: seconds, medians of {meta['config']['rounds']} interleaved rounds after a warm-up; "
              f"{meta['device']} ({meta['device_name']}), {meta['threads']} threads; other processes used "
              f"{_fmt(None if others is None else 100 * others, 0)}% of the CPUs meanwhile"
              + (" -- WARNING: busy machine, multi-threaded CPU timings are distorted" if (others or 0) > 0.05
                 else ""),
              "* pytorch-grad-cam: per-concept median x K (extrapolated; --gradcam-full times all K calls)",
              f"jac: first call on new cached features (builds the Jacobian); +txt: new prompts with their text "
              f"encoding, {meta['default_templates']} templates; +txt1: one template",
              f"MB: peak memory above the loaded model during one call ({meta['memory_method']})", ""]
    for t in report["targets"]:
        status = {True: "met", False: "NOT MET", None: "reported" if t["value"] is not None else "not measured"}
        lines.append(f"[{status[t['met']]}] {t['text']}")
    return "\n".join(lines)


def write_json(report: dict, path: str | os.PathLike) -> None:
    """The report as JSON (missing figures are null)."""
    from ..io.files import atomic_write, json_bytes

    atomic_write(Path(path), lambda f: f.write(json_bytes(report, indent=1)))
