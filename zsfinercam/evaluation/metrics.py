"""Localization metrics for saliency maps (numpy; min-max, resize and boxes are render's),
plus perturbation metrics on a scorer.

Conventions used throughout:
- A *map* is a real (H, W) array, higher = more salient. Negative values count as zero
  where energy is measured. A *mask* is a bool (H, W) array of the same shape.
- A *box* is (x0, y0, x1, y1) in pixel indices with exclusive ends: it covers columns
  x0..x1-1 and rows y0..y1-1, so its area is (x1 - x0) * (y1 - y0). This is the one box
  convention of the package (render.py's docstring), so results' boxes compare directly.
- Thresholds apply to the min-max normalised map: `normalize(m) >= t`.
- Perturbation metrics call `score_fn(batch)` with a float32 batch (N, H, W, C) in the
  image's own value range; it returns probabilities (N, K), or (N,) for the target only.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

import numpy as np

from ..io import render

Box = tuple[int, int, int, int]
ScoreFn = Callable[[np.ndarray], np.ndarray]
Fill = Union[str, float, np.ndarray]
FILLS = ("mean", "blur", "zero")


def _as_map(saliency, name: str = "saliency") -> np.ndarray:
    m = np.asarray(saliency, dtype=np.float64)
    if m.ndim != 2 or m.size == 0:
        raise ValueError(f"{name} must be a non-empty 2-D (H, W) array, got shape {m.shape}")
    if not np.all(np.isfinite(m)):
        raise ValueError(f"{name} contains NaN or inf")
    return m


def _as_mask(mask, shape: Optional[tuple] = None, name: str = "mask") -> np.ndarray:
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (H, W) array, got shape {m.shape}")
    if shape is not None and m.shape != tuple(shape):
        raise ValueError(f"{name} shape {m.shape} does not match map shape {tuple(shape)}")
    return m.astype(bool)


def normalize(saliency) -> np.ndarray:
    """Min-max normalise to [0, 1] (float64); a constant map becomes all zeros (`render.minmax`)."""
    return render.minmax(_as_map(saliency))


def resize_map(saliency, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a map to (H, W), float64 (`render.upsample`: pixel centres aligned)."""
    return render.upsample(_as_map(saliency), shape)


def pointing_game(saliency, mask, tolerance: float = 0.0) -> bool:
    """Hit if the map's maximum lies in the mask or within `tolerance` pixels of it.

    The maximum is the first one in row-major order (np.argmax), so ties resolve
    deterministically. Zhang et al. (2016) use a tolerance of 15 px at 224 px.
    """
    m = _as_map(saliency)
    msk = _as_mask(mask, m.shape)
    if not msk.any():
        raise ValueError("mask is empty: the pointing game needs at least one target pixel")
    y, x = np.unravel_index(int(np.argmax(m)), m.shape)
    if msk[y, x]:
        return True
    ys, xs = np.nonzero(msk)
    return bool(np.min(np.hypot(ys - y, xs - x)) <= tolerance)


def energy_in_mask(saliency, mask) -> float:
    """Share of the map's positive energy inside the mask: sum(S[mask]) / sum(S), S = max(map, 0).

    Returns NaN for a map with no positive value (nothing to share out).
    """
    m = np.clip(_as_map(saliency), 0.0, None)
    msk = _as_mask(mask, m.shape)
    total = m.sum()
    return float("nan") if total <= 0 else float(m[msk].sum() / total)


def mask_to_bbox(mask) -> Optional[Box]:
    """Tight box around the True pixels (exclusive ends), or None for an empty mask."""
    return render.mask_box(_as_mask(mask))


def threshold_map(saliency, threshold: float = 0.5, largest_component: bool = False) -> np.ndarray:
    """Bool mask `normalize(map) >= threshold`, optionally only its largest 8-connected blob.

    A constant map gives an empty mask for any threshold > 0 (it has no salient region).
    """
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    return render.hot_mask(_as_map(saliency), threshold, "largest" if largest_component else "all")


def map_to_bbox(saliency, threshold: float = 0.5, largest_component: bool = True) -> Optional[Box]:
    """Box around the thresholded map (by default its largest blob, the usual WSOL protocol).

    A result's own box (`LocateResult.bbox`) holds the peak's blob instead; both have exclusive ends.
    """
    return mask_to_bbox(threshold_map(saliency, threshold, largest_component))


def box_iou(a: Optional[Sequence[int]], b: Optional[Sequence[int]]) -> float:
    """Intersection over union of two boxes (x0, y0, x1, y1); 0.0 if either is None or empty."""
    if a is None or b is None:
        return 0.0
    for box in (a, b):
        if len(box) != 4:
            raise ValueError(f"a box is (x0, y0, x1, y1), got {box!r}")
    iw = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    area = lambda r: max(0, r[2] - r[0]) * max(0, r[3] - r[1])  # noqa: E731
    union = area(a) + area(b) - inter
    return 0.0 if union <= 0 else float(inter / union)


def mask_iou(a, b) -> float:
    """|a & b| / |a | b| of two bool masks; 0.0 when both are empty."""
    ma = _as_mask(a, name="a")
    mb = _as_mask(b, ma.shape, name="b")
    union = np.logical_or(ma, mb).sum()
    return 0.0 if union == 0 else float(np.logical_and(ma, mb).sum() / union)


def iou_at_threshold(saliency, mask, threshold: float = 0.5, kind: str = "mask") -> float:
    """IoU of the thresholded map with a ground-truth mask.

    Args:
        kind: "mask" compares `normalize(map) >= threshold` with the mask pixel by pixel;
            "box" compares the box of the largest thresholded blob with the mask's box.
    """
    m = _as_map(saliency)
    msk = _as_mask(mask, m.shape)
    if kind == "mask":
        return mask_iou(threshold_map(m, threshold), msk)
    if kind == "box":
        return box_iou(map_to_bbox(m, threshold), mask_to_bbox(msk))
    raise ValueError(f"kind must be 'mask' or 'box', got {kind!r}")


def random_map(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    """Sanity baseline: i.i.d. uniform [0, 1) map, deterministic in `seed`."""
    return np.random.default_rng(seed).random(tuple(shape))


def rank_correlation(a, b) -> float:
    """Spearman rank correlation of two maps (ties get average ranks); NaN if one is constant.

    The model-randomisation check (Adebayo et al., 2018) expects a low value between a
    map from trained weights and the same method's map on randomised weights.
    """
    ra, rb = _ranks(_as_map(a, "a").ravel()), _ranks(_as_map(b, "b").ravel())
    if ra.shape != rb.shape:
        raise ValueError(f"maps differ in size: {np.shape(a)} vs {np.shape(b)}")
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def auroc(scores, labels) -> float:
    """Area under the ROC curve of `scores` for the bool `labels`: the probability that a positive
    outscores a negative, ties counting half; NaN when there is no positive or no negative."""
    s, y = np.asarray(scores, dtype=np.float64).ravel(), np.asarray(labels, dtype=bool).ravel()
    if s.shape != y.shape:
        raise ValueError(f"scores and labels differ in length: {s.size} vs {y.size}")
    positives, negatives = int(y.sum()), int((~y).sum())
    if not positives or not negatives:
        return float("nan")
    ranks = _ranks(s)  # 0-based, ties averaged
    return float((ranks[y].sum() - positives * (positives - 1) / 2) / (positives * negatives))


def _ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(len(x), dtype=np.float64)
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return (sums / counts)[inverse]


def _as_image(image) -> np.ndarray:
    img = np.asarray(image, dtype=np.float32)
    if img.ndim == 2:
        img = img[..., None]
    if img.ndim != 3 or img.shape[0] == 0 or img.shape[1] == 0:
        raise ValueError(f"image must be (H, W) or (H, W, C), got shape {np.shape(image)}")
    return img


def fill_image(image, fill: Fill = "mean", blur_sigma: Optional[float] = None) -> np.ndarray:
    """The image that replaces removed pixels.

    Args:
        fill: "mean" (each channel's mean over the image), "blur" (Gaussian blur of the
            image, sigma `blur_sigma`, default min(H, W) / 16), "zero", a number, or an
            array broadcastable to (H, W, C).
    """
    img = _as_image(image)
    if isinstance(fill, str):
        if fill == "mean":
            return np.broadcast_to(img.mean(axis=(0, 1), keepdims=True), img.shape).copy()
        if fill == "zero":
            return np.zeros_like(img)
        if fill == "blur":
            import cv2

            sigma = blur_sigma if blur_sigma is not None else min(img.shape[:2]) / 16
            out = cv2.GaussianBlur(img, (0, 0), sigmaX=float(sigma), borderType=cv2.BORDER_REFLECT)
            return out.reshape(img.shape)
        raise ValueError(f"unknown fill {fill!r}; valid: {list(FILLS)}, a number or an array")
    return np.broadcast_to(np.asarray(fill, dtype=np.float32), img.shape).copy()


def _pixel_order(saliency, shape: tuple[int, int]) -> np.ndarray:
    """Flat pixel indices from most to least salient (ties: row-major order)."""
    m = resize_map(saliency, shape)
    return np.argsort(-m.ravel(), kind="stable")


def _target_scores(score_fn: ScoreFn, batch: np.ndarray, target: Optional[int]) -> np.ndarray:
    out = np.asarray(score_fn(batch), dtype=np.float64)
    if out.ndim == 1 and out.shape[0] == len(batch):
        return out
    if out.ndim == 2 and out.shape[0] == len(batch):
        if target is None:
            raise ValueError("score_fn returned (N, K) scores: pass `target` (a class index)")
        return out[:, target]
    raise ValueError(f"score_fn must return (N,) or (N, K) for N={len(batch)}, got {out.shape}")


def perturbation_curve(image, saliency, score_fn: ScoreFn, target: Optional[int] = None,
                       mode: str = "deletion", steps: int = 20, fill: Fill = "mean",
                       batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Target score as the most salient pixels are removed (deletion) or revealed (insertion).

    At step i of `steps`, the top round(i / steps * H * W) pixels of the map (resized to
    the image) are replaced by `fill` (deletion) or copied from the image into the fill
    (insertion); i = 0..steps.

    Returns:
        (fractions, scores), both of length steps + 1.
    """
    if mode not in ("deletion", "insertion"):
        raise ValueError(f"mode must be 'deletion' or 'insertion', got {mode!r}")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    img = _as_image(image)
    h, w, c = img.shape
    base = fill_image(img, fill)
    src, dst = (img, base) if mode == "deletion" else (base, img)
    order = _pixel_order(saliency, (h, w))
    fractions = np.arange(steps + 1) / steps
    counts = np.round(fractions * h * w).astype(int)
    scores = []
    for start in range(0, len(counts), batch_size):
        batch = np.repeat(src.reshape(1, h * w, c), len(counts[start:start + batch_size]), axis=0)
        for row, n in enumerate(counts[start:start + batch_size]):
            batch[row, order[:n]] = dst.reshape(h * w, c)[order[:n]]
        scores.append(_target_scores(score_fn, batch.reshape(-1, h, w, c), target))
    return fractions, np.concatenate(scores)


def auc(fractions, scores) -> float:
    """Trapezoidal area under scores(fraction)."""
    x, y = np.asarray(fractions, float), np.asarray(scores, float)
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2))


def deletion_auc(image, saliency, score_fn: ScoreFn, target: Optional[int] = None,
                 steps: int = 20, fill: Fill = "mean") -> float:
    """Area under the deletion curve (Petsiuk et al., 2018); lower = better map."""
    return auc(*perturbation_curve(image, saliency, score_fn, target, "deletion", steps, fill))


def insertion_auc(image, saliency, score_fn: ScoreFn, target: Optional[int] = None,
                  steps: int = 20, fill: Fill = "blur") -> float:
    """Area under the insertion curve, starting from `fill` (default blur); higher = better."""
    return auc(*perturbation_curve(image, saliency, score_fn, target, "insertion", steps, fill))


def confidence_drops(image, saliency, score_fn: ScoreFn, target: int,
                     reference: Union[int, Sequence[int]], top_percent: float = 5.0,
                     fill: Fill = "mean") -> tuple[float, float]:
    """(p_c - p_c*, p_d - p_d*): probability drops of target c and reference(s) d.

    p* is the probability after the top `top_percent` % of pixels of the map (resized to
    the image; round(top_percent / 100 * H * W) pixels) are replaced by `fill`. With
    several references, the reference drop is their mean.
    """
    if not 0.0 < top_percent <= 100.0:
        raise ValueError(f"top_percent must be in (0, 100], got {top_percent}")
    refs = [reference] if np.isscalar(reference) else list(reference)
    if not refs:
        raise ValueError("reference must be a class index or a non-empty sequence of them")
    img = _as_image(image)
    h, w, c = img.shape
    n = int(round(top_percent / 100.0 * h * w))
    masked = img.reshape(h * w, c).copy()
    order = _pixel_order(saliency, (h, w))[:n]
    masked[order] = fill_image(img, fill).reshape(h * w, c)[order]
    probs = np.asarray(score_fn(np.stack([img, masked.reshape(h, w, c)])), dtype=np.float64)
    if probs.ndim != 2 or probs.shape[0] != 2:
        raise ValueError(f"score_fn must return (N, K) probabilities here, got shape {probs.shape}")
    drop = probs[0] - probs[1]
    return float(drop[target]), float(np.mean(drop[refs]))


def relative_drop(image, saliency, score_fn: ScoreFn, target: int,
                  reference: Union[int, Sequence[int]], top_percent: float = 5.0,
                  fill: Fill = "mean") -> float:
    """RD@k of the Finer-CAM paper: (p_c - p_c*) - (p_d - p_d*), k = `top_percent`.

    Positive when hiding the map's top pixels costs the target more than the similar
    reference class, i.e. the map marks what tells them apart. Fill: see `fill_image`
    (default: the image's per-channel mean colour).
    """
    d_target, d_ref = confidence_drops(image, saliency, score_fn, target, reference, top_percent, fill)
    return d_target - d_ref
