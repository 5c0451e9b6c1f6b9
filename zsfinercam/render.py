"""Maps out: upsampling, colour, overlays, peaks and boxes. Never calls a backend."""
from __future__ import annotations

from typing import TypeVar

import cv2
import numpy as np
from PIL import Image

DEFAULT_THRESHOLD = 0.5  # fraction of the map's range that counts as "on" for boxes
Img = TypeVar("Img", Image.Image, np.ndarray)


def upsample(norm_map: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A [0, 1] token map (h, w) resized bilinearly to `size` (H, W), float32 in [0, 1]."""
    h, w = size
    out = cv2.resize(np.asarray(norm_map, dtype=np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    return np.clip(out, 0.0, 1.0)


def colorize(heatmap: np.ndarray) -> np.ndarray:
    """JET colours (blue = low, red = high) for a [0, 1] map, as RGB uint8 (H, W, 3)."""
    scaled = np.clip(np.asarray(heatmap, dtype=np.float32), 0.0, 1.0) * 255.0
    bgr = cv2.applyColorMap(np.round(scaled).astype(np.uint8), cv2.COLORMAP_JET)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def overlay(image: Img, heatmap: np.ndarray, alpha: float = 0.5) -> Img:
    """The heatmap blended over the image; PIL in gives PIL out, array in gives array out.

    The caller's image is never modified.
    """
    rgb = np.asarray(image.convert("RGB")) if isinstance(image, Image.Image) else np.asarray(image)
    if rgb.shape[:2] != heatmap.shape:
        raise ValueError(f"expected a heatmap of the image's size {rgb.shape[:2]}, got {heatmap.shape}")
    blend = (1.0 - alpha) * rgb.astype(np.float32) + alpha * colorize(heatmap).astype(np.float32)
    out = np.clip(np.round(blend), 0, 255).astype(np.uint8)
    return Image.fromarray(out) if isinstance(image, Image.Image) else out


def peak(heatmap: np.ndarray) -> tuple[int, int]:
    """(x, y) pixel of the map's maximum (first one in row-major order on ties)."""
    y, x = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    return int(x), int(y)


def bbox(heatmap: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> tuple[int, int, int, int] | None:
    """Box (x0, y0, x1, y1), inclusive, around the connected region >= threshold that holds the peak.

    None when the map is empty (all zeros).
    """
    if not np.any(heatmap > 0):
        return None
    mask = (heatmap >= threshold * float(heatmap.max())).astype(np.uint8)
    _, labels = cv2.connectedComponents(mask, connectivity=8)
    x, y = peak(heatmap)
    ys, xs = np.nonzero(labels == labels[y, x])
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())
