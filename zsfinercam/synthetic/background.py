"""Cluttered backgrounds: a muted gradient plus distractor shapes.

Distractors use the attribute colours (and stripes and dots like the wing patterns), so
that neither "is there red anywhere" nor "is there a striped thing anywhere" tells two
classes apart: only *where on the bird* a colour or pattern sits does. Their shapes
(discs, ellipses, rings, rectangles, bars) avoid the fan of a tail, so that a tail can be
told from clutter by its own shape, not only by where it joins the body.
"""
from __future__ import annotations

import numpy as np

from .taxonomy import PART_COLOURS

OTHER_COLOURS: tuple[tuple[int, int, int], ...] = (
    (130, 60, 160), (235, 130, 30), (235, 235, 235), (60, 190, 200),
    (230, 130, 170), (40, 40, 40), (150, 110, 70),
)
BACKGROUND_NOISE_STD = 4.0
_SHAPES = ("disc", "ellipse", "rect", "ring", "bar")


def _muted(r: np.random.Generator) -> np.ndarray:
    """A random low-saturation colour."""
    grey = r.uniform(90, 220)
    tint = r.normal(0.0, 25.0, size=3)
    return np.clip(grey + tint, 0, 255)


def _gradient(r: np.random.Generator, size: int) -> np.ndarray:
    a, b = _muted(r), _muted(r)
    theta = r.uniform(0, 2 * np.pi)
    y, x = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    t = (np.cos(theta) * (x - 0.5) + np.sin(theta) * (y - 0.5)) / np.sqrt(0.5) + 0.5
    t = np.clip(t, 0, 1)[..., None]
    return (1 - t) * a + t * b


def _shape_region(kind: str, r: np.random.Generator, size: int) -> np.ndarray:
    """Boolean region of one distractor shape at a random place, size and angle."""
    y, x = np.mgrid[0:size, 0:size] + 0.5
    cx, cy = r.uniform(0, size, size=2)
    rad = size * r.uniform(0.04, 0.15)
    theta = r.uniform(0, np.pi)
    c, s = np.cos(theta), np.sin(theta)
    du, dv = c * (x - cx) + s * (y - cy), -s * (x - cx) + c * (y - cy)
    if kind == "disc":
        return np.hypot(du, dv) <= rad
    if kind == "ellipse":
        return (du / rad) ** 2 + (dv / (0.5 * rad)) ** 2 <= 1
    if kind == "rect":
        return (np.abs(du) <= rad) & (np.abs(dv) <= 0.6 * rad)
    if kind == "bar":
        return (np.abs(du) <= 2.5 * rad) & (np.abs(dv) <= 0.15 * rad + 0.6)
    r = np.hypot(du, dv)  # ring
    return (r <= rad) & (r >= 0.55 * rad)


def _fill_marks(r: np.random.Generator, size: int) -> np.ndarray:
    """Stripes or dots (or nothing) used inside a distractor shape."""
    y, x = np.mgrid[0:size, 0:size] + 0.5
    kind = r.choice(["solid", "solid", "solid", "solid", "striped", "spotted"])
    period = size * r.uniform(0.06, 0.1)
    theta = r.uniform(0, np.pi)
    u = np.cos(theta) * x + np.sin(theta) * y
    v = -np.sin(theta) * x + np.cos(theta) * y
    if kind == "striped":
        return np.mod(u / period, 1.0) < 0.5
    if kind == "spotted":
        du = (u / period - np.round(u / period)) * period
        dv = (v / period - np.round(v / period)) * period
        return np.hypot(du, dv) <= 0.3 * period
    return np.zeros((size, size), dtype=bool)


def _distractor_colour(r: np.random.Generator) -> np.ndarray:
    if r.random() < 0.6:
        base = list(PART_COLOURS.values())[r.integers(len(PART_COLOURS))]
    else:
        base = OTHER_COLOURS[r.integers(len(OTHER_COLOURS))]
    return np.clip(np.array(base, float) + r.integers(-15, 16, size=3), 0, 255)


def render_background(r: np.random.Generator, size: int) -> np.ndarray:
    """Background as uint8 (size, size, 3), fully determined by the generator state."""
    img = _gradient(r, size)
    for _ in range(int(r.integers(5, 11))):
        region = _shape_region(_SHAPES[r.integers(len(_SHAPES))], r, size)
        img[region] = _distractor_colour(r)
        marks = _fill_marks(r, size) & region
        img[marks] = _distractor_colour(r)
    img = img + r.normal(0.0, BACKGROUND_NOISE_STD, size=img.shape)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)
