"""Maps out: min-max, upsampling, colour, overlays, peaks and boxes. Never calls a backend.

Box convention (results, their JSON, `eval` manifests and `metrics` all use it): a box is
(x0, y0, x1, y1) in pixel indices with EXCLUSIVE ends. It covers columns x0..x1-1 and rows
y0..y1-1, so its width is x1 - x0 and a one-pixel box is (x, y, x + 1, y + 1). The hot region
is `minmax(map) >= threshold`, 8-connected; a result's box holds the component that contains
the map's peak (the region the peak points at, even when a larger but cooler blob exists),
while the WSOL metrics take the largest component, as that protocol prescribes.
"""
from __future__ import annotations

from typing import TypeVar

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

DEFAULT_THRESHOLD = 0.5  # fraction of the map's range that counts as "on" for boxes
DEFAULT_ALPHA = 0.6  # opacity of the colour where the map is hottest (it falls to 0 with the map)
MIN_OVERLAY_SIDE = 512  # overlays of smaller images are drawn this large on the long side
Img = TypeVar("Img", Image.Image, np.ndarray)


COMPONENTS = ("peak", "largest", "all")  # which part of the hot region a box holds


def _float(values) -> np.ndarray:
    """float64 arrays stay float64; anything else becomes float32."""
    arr = np.asarray(values)
    return arr if arr.dtype == np.float64 else arr.astype(np.float32)


def minmax(values) -> np.ndarray:
    """(values - min) / (max - min), in [0, 1]; a constant array (or an empty one) gives zeros, never NaN.

    float64 in gives float64 out, anything else float32.
    """
    arr = _float(values)
    if arr.size == 0:
        return arr.copy()
    low, span = arr.min(), np.ptp(arr)
    return (arr - low) / span if span > 0 else np.zeros_like(arr)


def upsample(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A map (h, w) resized bilinearly to `size` (H, W) (pixel centres aligned, as cv2.INTER_LINEAR).

    Values stay within the input's [min, max] (so a [0, 1] map stays in [0, 1]); float64 in
    gives float64 out, anything else float32. A map already of that size comes back as a copy.
    """
    arr = _float(values)
    h, w = (int(n) for n in size)
    if arr.shape == (h, w):
        return arr.copy()
    out = cv2.resize(arr, (w, h), interpolation=cv2.INTER_LINEAR)
    return np.clip(out, arr.min(), arr.max())


def placed(values: np.ndarray, size: tuple[int, int], window: tuple[int, int, int, int] | None = None,
           frame: tuple[int, int] | None = None) -> np.ndarray:
    """`upsample(values, size)`; with a `window` (x0, y0, x1, y1), exclusive ends, in pixels of a
    `frame` (H, W) (default: `size`), the map upsampled into that window scaled to `size`, 0 elsewhere.
    """
    if window is None:
        return upsample(values, size)
    h, w = (int(n) for n in size)
    fh, fw = frame or (h, w)
    x0, x1 = (round(v * w / fw) for v in window[0::2])
    y0, y1 = (round(v * h / fh) for v in window[1::2])
    arr = _float(values)
    out = np.zeros((h, w), dtype=arr.dtype)
    if x1 > x0 and y1 > y0:
        out[y0:y1, x0:x1] = upsample(arr, (y1 - y0, x1 - x0))
    return out


def outline(image: Img, window: tuple[int, int, int, int], frame: tuple[int, int] | None = None) -> Img:
    """A copy of `image` with the box `window` (pixels of a `frame` (H, W), default the image's) outlined
    in white on black, a line about 1/200 of the image's longer side thick; PIL in, PIL out."""
    pil = image.convert("RGB") if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
    pil = pil.copy()
    fh, fw = frame or (pil.height, pil.width)
    x0, x1 = (round(v * pil.width / fw) for v in window[0::2])
    y0, y1 = (round(v * pil.height / fh) for v in window[1::2])
    width = max(1, max(pil.size) // 200)
    draw = ImageDraw.Draw(pil)
    draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline="black", width=2 * width)
    draw.rectangle((x0 + width // 2, y0 + width // 2, x1 - 1 - width // 2, y1 - 1 - width // 2),
                   outline="white", width=width)
    return pil if isinstance(image, Image.Image) else np.asarray(pil)


def colorize(heatmap: np.ndarray) -> np.ndarray:
    """JET colours (blue = low, red = high) for a [0, 1] map, as RGB uint8 (H, W, 3)."""
    unit = np.clip(np.asarray(heatmap, dtype=np.float32), 0.0, 1.0)
    bgr = cv2.applyColorMap(cv2.convertScaleAbs(unit, alpha=255.0), cv2.COLORMAP_JET)  # x 255, rounded to uint8
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def overlay(image: Img, heatmap: np.ndarray, alpha: float = DEFAULT_ALPHA) -> Img:
    """The heatmap blended over the image in proportion to its value; PIL in gives PIL out,
    array in gives array out.

    Each pixel's opacity is `alpha * heatmap`: where the map is 0 the image's pixels are
    kept exactly, so its true colours stay judgeable where there is no evidence; the
    hottest pixels get `alpha` of the JET colour. The caller's image is never modified.
    """
    rgb = np.asarray(image.convert("RGB")) if isinstance(image, Image.Image) else np.asarray(image)
    if rgb.shape[:2] != heatmap.shape:
        raise ValueError(f"expected a heatmap of the image's size {rgb.shape[:2]}, got {heatmap.shape}")
    weight = np.clip(np.asarray(heatmap, dtype=np.float32), 0.0, 1.0) * np.float32(alpha)
    # (1 - w) * image + w * colour per pixel, rounded to uint8, in one C pass (a 12-MP image in well under a second)
    out = cv2.blendLinear(np.ascontiguousarray(rgb, dtype=np.uint8), colorize(heatmap), 1.0 - weight, weight)
    return Image.fromarray(out) if isinstance(image, Image.Image) else out


def colorbar(width: int, height: int) -> np.ndarray:
    """A horizontal JET colour bar, low (left) to high (right), RGB uint8 (height, width, 3)."""
    ramp = np.linspace(0.0, 1.0, max(width, 1), dtype=np.float32)[None, :].repeat(max(height, 1), axis=0)
    return colorize(ramp)


def font(size: int):
    """Pillow's default font at `size` pixels (the fixed bitmap font where FreeType is missing)."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):
        return ImageFont.load_default()


def wrap(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> list[str]:
    """`text` broken at spaces into lines of at most `width` pixels (a word wider than that is cut)."""
    lines, line = [], ""
    for word in text.split():
        candidate = f"{line} {word}".strip()
        if line and draw.textlength(candidate, font=font) > width:
            lines.append(line)
            candidate = word
        while draw.textlength(candidate, font=font) > width and len(candidate) > 1:
            cut = len(candidate) - 1
            while cut > 1 and draw.textlength(candidate[:cut], font=font) > width:
                cut -= 1
            lines.append(candidate[:cut])
            candidate = candidate[cut:]
        line = candidate
    return [*lines, line] if line else lines or [""]


def captioned(image: Image.Image, lines: list[str], bar: bool = True) -> Image.Image:
    """`image` with a white band below: `lines` of text (wrapped to the width) and, with `bar`,
    the JET colour bar labelled low ... high. Font and bar scale with the image's width."""
    width = image.width
    size = max(12, width // 40)
    face = font(size)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text = [part for line in lines for part in wrap(probe, line, face, width - 2 * size)]
    pitch, bar_h = round(size * 1.3), max(8, size)
    height = size // 2 + pitch * len(text) + (bar_h + pitch + size // 2 if bar else 0)
    canvas = Image.new("RGB", (width, image.height + height), "white")
    canvas.paste(image.convert("RGB"), (0, 0))
    draw = ImageDraw.Draw(canvas)
    y = image.height + size // 2
    for line in text:
        draw.text((size, y), line, fill="black", font=face)
        y += pitch
    if bar:
        x0, x1 = size + round(draw.textlength("low ", font=face)), width - size - round(draw.textlength(" high", font=face))
        if x1 - x0 >= 16:
            canvas.paste(Image.fromarray(colorbar(x1 - x0, bar_h)), (x0, y))
            draw.text((size, y + bar_h // 2), "low", fill="black", font=face, anchor="lm")
            draw.text((width - size, y + bar_h // 2), "high", fill="black", font=face, anchor="rm")
    return canvas


def peak(heatmap: np.ndarray) -> tuple[int, int]:
    """(x, y) pixel of the map's maximum (first one in row-major order on ties)."""
    y, x = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    return int(x), int(y)


def hot_mask(values: np.ndarray, threshold: float = DEFAULT_THRESHOLD, component: str = "all") -> np.ndarray:
    """Bool mask of `minmax(values) >= threshold`, or of one 8-connected component of it.

    component: "all" (every hot pixel), "peak" (the component holding `peak(values)`), or
    "largest" (the largest component; on equal sizes the first found in row-major order).
    A constant map has no hot region: its mask is empty for any threshold > 0.
    """
    if component not in COMPONENTS:
        raise ValueError(f"component must be one of {', '.join(COMPONENTS)}, got {component!r}")
    arr = _float(values)
    if arr.size and np.ptp(arr) > 0:
        mask = minmax(arr) >= threshold
    else:
        mask = np.full(arr.shape, threshold <= 0)
    if component == "all" or not mask.any():
        return mask
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if component == "peak":
        x, y = peak(arr)
        return labels == labels[y, x]
    return labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Tight box (x0, y0, x1, y1), exclusive ends, around a mask's True pixels; None if it has none."""
    ys, xs = np.nonzero(mask)
    if xs.size == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def bbox(values: np.ndarray, threshold: float = DEFAULT_THRESHOLD,
         component: str = "peak") -> tuple[int, int, int, int] | None:
    """Box (x0, y0, x1, y1), exclusive ends, around the hot region (`hot_mask`) holding the peak.

    None when the map has no hot region (e.g. all zeros). See the module docstring for the convention.
    """
    return mask_box(hot_mask(values, threshold, component))
