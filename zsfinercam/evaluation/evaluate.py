"""Evaluation with ground truth: manifests (JSONL) or the synthetic benchmark, several methods.

Manifest: one JSON object per line,
    {"image": "birds/001.jpg", "concept": "red-tailed hawk",
     "references": ["red-shouldered hawk"]  or  "vocab": "cub200",
     "mask": "masks/001.png",   (optional: non-zero pixels are the part that should light up)
     "bbox": [x0, y0, x1, y1]}  (optional: pixels, exclusive ends)
Relative paths are read from the manifest's folder.

Per item and method the heatmap (at image size) is scored with `zsfinercam.evaluation.metrics`:
pointing game, energy inside the mask, mask IoU at 0.5 (box IoU for boxes) and, with
`perturbation=True`, deletion / insertion AUC and the relative confidence drop RD@k
(fill: the image's mean colour), where probabilities are a softmax over the concept and
its references. Sanity baselines: "random" is a random map; "randomized" is Finer-CAM on
a copy of the model whose weight matrices are redrawn (the map should collapse to chance).
With several CAM `bases`, each map method is scored once per base, in rows labelled
"method/base" ("base/hirescam" is HiResCAM alone, "finer/hirescam" Finer-CAM on it). With `zoom`, each map
method is also scored zoomed (`zsfinercam.zoom`), in rows labelled "method+zoom".
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image

from . import metrics
from ..errors import UsageError, WorkError
from ..io.files import atomic_write
from ..io.images import load_image
from ..options import BASES, EVAL_METHODS, LocateOptions

MASK_METRICS = ("pointing", "energy", "iou")
PERTURBATION_METRICS = ("deletion", "insertion", "rd")
FAITH_METRICS = ("faithfulness", "shuffled")  # the map's faithfulness, and its control (tokens shuffled)


@dataclass
class EvalItem:
    image: str | np.ndarray
    concept: str
    references: list[str] | None = None
    vocab: str | list[str] | None = None
    mask: np.ndarray | None = None  # bool (H, W)
    bbox: tuple[int, int, int, int] | None = None
    label: str = ""


@dataclass
class EvalReport:
    rows: list[dict] = field(default_factory=list)  # one per (item, method)

    def summary(self) -> dict[str, dict[str, float]]:
        """Mean of each metric per method; items lacking a metric, or where it is undefined
        (NaN, e.g. the energy of an all-zero map), are left out of its mean."""
        out: dict[str, dict[str, float]] = {}
        for method in dict.fromkeys(r["method"] for r in self.rows):
            mine = [r for r in self.rows if r["method"] == method]
            stats = {"n": float(len(mine))}
            for key in (*MASK_METRICS, "box_iou", *PERTURBATION_METRICS, *FAITH_METRICS):
                vals = [float(r[key]) for r in mine if r.get(key) is not None and np.isfinite(r[key])]
                if vals:
                    stats[key] = float(np.mean(vals))
            scored = [r for r in mine if r.get("faithfulness") is not None and "pointing" in r]
            if scored:  # does faithfulness predict a peak on the part? NaN when all hit or all miss
                stats["faith_auroc"] = metrics.auroc([r["faithfulness"] for r in scored],
                                                     [r["pointing"] > 0 for r in scored])
            out[method] = stats
        return out

    def table(self) -> str:
        summary = self.summary()
        keys = [k for k in (*MASK_METRICS, "box_iou", *PERTURBATION_METRICS, *FAITH_METRICS, "faith_auroc")
                if any(k in s for s in summary.values())]
        width = max(10, *(len(m) + 1 for m in summary))  # "method/base" labels are longer than 10
        cols = {k: max(11, len(k) + 2) for k in keys}
        lines = [f"{'method':<{width}}{'n':>6}" + "".join(f"{k:>{cols[k]}}" for k in keys)]
        for method, stats in summary.items():
            cells = "".join(f"{stats[k]:>{cols[k]}.3f}" if k in stats else f"{'-':>{cols[k]}}" for k in keys)
            lines.append(f"{method:<{width}}{int(stats['n']):>6}{cells}")
        bases = {r["base"] for r in self.rows if "base" in r}
        if len(bases) == 1 and not any("/" in m for m in summary):  # one base, rows named by method
            lines.append(f"CAM base: {bases.pop()}")
        return "\n".join(lines)


def read_manifest(path: str | os.PathLike) -> list[EvalItem]:
    """Items of a JSONL manifest; a bad line raises UsageError naming it."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"manifest not found: {path}")
    items = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            items.append(_parse_line(line, path.parent, f"{path}:{number}"))
    if not items:
        raise UsageError(f"manifest {path} has no items")
    return items


def _parse_line(line: str, root: Path, where: str) -> EvalItem:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise UsageError(f"{where}: not JSON ({err.msg})") from None
    if not isinstance(record, dict) or not isinstance(record.get("image"), str) \
            or not isinstance(record.get("concept"), str):
        raise UsageError(f"{where}: expected an object with string fields 'image' and 'concept'")
    mask = None
    if record.get("mask"):
        mask_path = root / record["mask"]
        if not mask_path.is_file():
            raise UsageError(f"{where}: mask not found: {mask_path}")
        mask = np.load(mask_path) if mask_path.suffix == ".npy" else np.asarray(Image.open(mask_path).convert("L"))
        mask = mask.astype(bool)
    bbox = record.get("bbox")
    if bbox is not None and (not isinstance(bbox, list) or len(bbox) != 4):
        raise UsageError(f"{where}: bbox must be [x0, y0, x1, y1]")
    return EvalItem(str(root / record["image"]), record["concept"], record.get("references"),
                    record.get("vocab"), mask, tuple(bbox) if bbox else None, record.get("label", ""))


def synthetic_items(n: int, seed: int = 12345, split: str = "all", size: int | None = None,
                    subject_scale: float = 1.0) -> list[EvalItem]:
    """The synthetic benchmark: each bird against the classes that differ from it in ONE part.

    Item k contrasts part ATTRIBUTE_PARTS[k % 3]; its references are every class that
    differs only there, and its mask is that part: the evidence that tells them apart.
    `subject_scale` S < 1 pastes each bird (of `size` pixels) on a cluttered canvas 1/S
    times as large (`synthetic.make_scene`): small subjects in large photos.
    """
    from ..synthetic import ATTRIBUTE_PARTS, PART_VALUES, class_name, make_dataset

    if n < 1:
        raise UsageError(f"--synthetic needs a positive number of images, got {n}")
    if not 0 < subject_scale <= 1:
        raise UsageError(f"--subject-scale must be in (0, 1], got {subject_scale}")
    items = []
    sizing = {"size": size} if size else {}
    for k, sample in enumerate(make_dataset(n, seed=seed, split=split, subject_scale=subject_scale, **sizing)):
        part = ATTRIBUTE_PARTS[k % len(ATTRIBUTE_PARTS)]
        refs = [class_name({**sample.attrs, part: v}) for v in PART_VALUES[part] if v != sample.attrs[part]]
        items.append(EvalItem(np.asarray(sample.image), sample.class_name, refs, None,
                              sample.masks[part], None, f"synthetic-{k}:{part}"))
    return items


def write_manifest(items: Sequence[EvalItem], folder: str | os.PathLike) -> Path:
    """Save in-memory items (images, masks) as PNGs plus manifest.jsonl; returns the manifest path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for k, item in enumerate(items):
        image, _ = load_image(item.image)
        _write_png(folder / f"image_{k:05d}.png", image)
        record = {"image": f"image_{k:05d}.png", "concept": item.concept, "label": item.label}
        if item.references is not None:
            record["references"] = list(item.references)
        if item.vocab is not None:
            record["vocab"] = item.vocab
        if item.mask is not None:
            _write_png(folder / f"mask_{k:05d}.png", item.mask.astype(np.uint8) * 255)
            record["mask"] = f"mask_{k:05d}.png"
        if item.bbox is not None:
            record["bbox"] = list(item.bbox)
        lines.append(json.dumps(record, ensure_ascii=False))
    path = folder / "manifest.jsonl"
    atomic_write(path, lambda f: f.write(("\n".join(lines) + "\n").encode("utf-8")))
    return path


def _write_png(path: Path, pixels: np.ndarray) -> None:
    atomic_write(path, lambda f: Image.fromarray(pixels).save(f, format="PNG"))


def evaluate(loc, items: Iterable[EvalItem], methods: Sequence[str] = EVAL_METHODS, *,
             bases: Sequence[str] | None = None, perturbation: bool = False, top_percent: float = 5.0,
             faithfulness: bool | str = False, progress: bool = True, zoom: bool = False,
             zoom_on: str | None = None) -> EvalReport:
    """Score every method on every item; the trunk runs once per item for all methods.

    Args:
        bases: CAM bases (options.BASES) to compare; None = the model's default base only
            (`Localizer.options`), rows labelled by method alone. Given, every method but "random"
            has one row per base, labelled "method/base". Every row but "random" records its "base".
        faithfulness: as `LocateOptions.faithfulness`: rows of the map methods (not the baselines,
            nor zoomed rows, whose maps cover a window) also get the map's "faithfulness" and
            "shuffled", that of the same map with its tokens shuffled (a control that should score
            near 0); the summary adds "faith_auroc", the AUROC of faithfulness for "the peak lies in
            the mask" (pointing).
        zoom: also score every map method zoomed, in rows "<label>+zoom" that record their
            "window" (None: the whole image); `zoom_on` as in `LocateOptions`.
    """
    from tqdm import tqdm

    bad = [m for m in methods if m not in EVAL_METHODS]
    if bad:
        raise UsageError(f"unknown method {bad[0]!r}; choose from: {', '.join(EVAL_METHODS)}")
    zooming = LocateOptions(zoom=zoom, zoom_on=zoom_on)  # checked before any map is made
    runs = _runs(methods, bases, loc.options().base, zooming.zoom_on, zoom)
    items = list(items)
    report = EvalReport()
    scrambled = _randomized(loc) if "randomized" in methods else None
    for k, item in enumerate(tqdm(items, desc="eval", unit="img", disable=None if progress else True)):
        feats = loc.encode_image(item.image)
        scrambled_feats = scrambled.encode_image(item.image) if scrambled is not None else None
        image = feats.images[0]
        refs = item.references
        for label, method, base, zoom_options in runs:
            if method == "randomized":
                heat, res = _heatmap(scrambled, scrambled_feats, item, "finer", base, k, zoom_options)
            else:
                heat, res = _heatmap(loc, feats, item, method, base, k, zoom_options)
            refs = refs or (list(res.references) if res is not None else None)
            row = {"item": k, "label": item.label, "concept": item.concept, "method": label}
            if base is not None:
                row["base"] = base
            if zoom_options:
                row["window"] = list(res.window) if res.window else None
            row.update(_mask_metrics(heat, item))
            if faithfulness and res is not None and method != "randomized" and not zoom_options:  # whole-image maps
                row.update(faithfulness_metrics(loc, feats, res, faithfulness, seed=k))
            if perturbation:
                row.update(_perturbation_metrics(loc, image, heat, [item.concept, *(refs or [])], top_percent))
            report.rows.append(row)
    return report


def _runs(methods: Sequence[str], bases: Sequence[str] | None, default: str, zoom_on: str | None = None,
          zoom: bool = False) -> list[tuple[str, str, str | None, dict]]:
    """(row label, method, base, zoom options) per scored map: one per method on the `default` base (rows
    labelled by method), or per method and base (labelled "method/base"); "random" has no base. With
    `zoom`, each map method's rows again, zoomed ("+zoom")."""
    if bases is not None and (isinstance(bases, str) or not bases):
        raise UsageError(f"bases must be a non-empty list of: {', '.join(BASES)}")
    chosen = [LocateOptions(base=b).base for b in dict.fromkeys(bases)] if bases is not None else [default]
    label = (lambda m, b: m) if bases is None else (lambda m, b: f"{m}/{b}")  # noqa: E731
    plain = [(m, m, None) if m == "random" else (label(m, b), m, b) for m in methods
             for b in (chosen[:1] if m == "random" else chosen)]
    zoomed = {"zoom": True, "zoom_on": zoom_on}
    return [(*run, {}) for run in plain] + \
        [(f"{name}+zoom", m, b, zoomed) for name, m, b in plain if zoom and m != "random"]


def with_logit_scale(loc, scale: float):
    """A Localizer over the same model whose zero-shot head uses logit scale `scale`.

    Only `Backend.logit_scale` (the config's) changes, on a shallow copy of the backend: the
    weights are shared, the original is untouched. A linear head has no scale to change.
    """
    from ..localizer import Localizer

    if not loc.config.cosine_head:
        raise UsageError("--logit-scale applies to zero-shot (cosine) heads only; this model has a linear head")
    if not np.isfinite(scale) or scale <= 0:
        raise UsageError(f"the logit scale must be a positive number, got {scale!r}")
    backend = loc.backend.with_config(dataclasses.replace(loc.config, logit_scale=float(scale)))
    return Localizer(backend, cache_dir=loc.text.cache_dir, kernel=loc.kernel, max_pixels=loc.max_pixels)


def _randomized(loc):
    """A Localizer over `Backend.randomized`: a copy of the model with redrawn weight matrices."""
    from ..localizer import Localizer

    return Localizer(loc.backend.randomized(seed=0), cache_dir=None, kernel=loc.kernel, max_pixels=loc.max_pixels)


def _heatmap(loc, feats, item: EvalItem, method: str, base: str | None, seed: int,
             zoom: dict) -> tuple[np.ndarray, object]:
    """The method's heatmap at image size on `base` (None for "random"), and its LocateResult (None: random)."""
    if method == "random":
        return metrics.resize_map(metrics.random_map(loc.config.grid_size, seed), feats.images[0].shape[:2]), None
    options = LocateOptions(vs=item.references, vocab=item.vocab, method=method, base=base, **zoom)
    res = loc.locate_many(feats, [item.concept], options)[0]
    return res.heatmap, res


def faithfulness_metrics(loc, feats, res, mode: bool | str, seed: int = 0) -> dict:
    """{"faithfulness": of the result's map, "shuffled": of the same map with its tokens permuted
    (seeded)}, both with the result's own objective and the same random sets (`core.removal`);
    None for an empty map."""
    from ..core import faithfulness, removal
    from ..core.objectives import Objective

    refs = tuple(range(1, len(res.references) + 1))
    finer = res.method == "finer" and res.alpha > 0 and refs
    objective = Objective(0, refs, res.alpha, res.objective) if finer else Objective(0, (), 0.0)
    flat = res.token_map.ravel()
    maps = np.stack([flat, np.random.default_rng(seed).permutation(flat)])[None]
    real, shuffled = removal.faithfulness(loc.backend, loc.pixels(feats.images),
                                          loc.head([res.concept, *res.references]), [[objective, objective]], maps,
                                          faithfulness.mode_of(mode))[0]
    return {"faithfulness": real.score, "shuffled": shuffled.score}


def _mask_metrics(heat: np.ndarray, item: EvalItem) -> dict:
    out = {}
    if item.mask is not None:
        if item.mask.shape != heat.shape:
            raise WorkError(f"{item.label or item.concept}: mask {item.mask.shape} does not match image {heat.shape}")
        out = {"pointing": float(metrics.pointing_game(heat, item.mask)),
               "energy": metrics.energy_in_mask(heat, item.mask),
               "iou": metrics.iou_at_threshold(heat, item.mask, 0.5)}
    if item.bbox is not None:
        out["box_iou"] = metrics.box_iou(metrics.map_to_bbox(heat, 0.5), item.bbox)
    return out


def _perturbation_metrics(loc, image: np.ndarray, heat: np.ndarray, classes: list[str], top_percent: float) -> dict:
    """Deletion/insertion AUC and RD@k; probabilities are a softmax over `classes` of the model's own
    logits: `Backend.encode_pixels` (the plain forward) and the engine's head."""
    import torch

    from ..core.engine import logits

    head = loc.head(classes)  # text embeddings, or a linear probe's classifier rows

    def score_fn(batch: np.ndarray) -> np.ndarray:
        arrays = [np.clip(np.round(b), 0, 255).astype(np.uint8) for b in batch]
        with torch.no_grad():
            e = loc.backend.encode_pixels(loc.pixels(arrays))
            return torch.softmax(logits(e, head, loc.backend.logit_scale), dim=-1).cpu().numpy()

    out = {"deletion": metrics.deletion_auc(image, heat, score_fn, target=0),
           "insertion": metrics.insertion_auc(image, heat, score_fn, target=0)}
    if len(classes) > 1:
        out["rd"] = metrics.relative_drop(image, heat, score_fn, 0, list(range(1, len(classes))), top_percent)
    return out
