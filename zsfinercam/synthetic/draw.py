"""Procedural birds with ground-truth part masks, a pure function of (class, seed).

Every shape is an implicit function evaluated on the pixel grid with numpy (no
antialiasing), painted back to front (tail, body, wings, beak, head). A pixel's part is
the last part painted on it, and the colour image is painted from the same regions, so a
mask holds exactly the pixels that show that part, occlusion included.

Three independent random streams are derived from the seed: background, pose/nuisance
and pixel noise. None depends on the class, so one seed with two classes gives the same
background, the same pose and the same noise, and the two images differ only inside the
parts whose attribute differs.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from . import background as _bg
from .taxonomy import PART_COLOURS, PARTS, AttrsLike, class_name, parse_class

# Nuisance body colours (never an attribute colour). Wings are a darker shade of the body.
BODY_COLOURS: dict[str, tuple[int, int, int]] = {
    "brown": (125, 85, 50),
    "grey": (135, 135, 135),
    "tan": (195, 165, 120),
    "slate": (75, 80, 90),
}
BEAK_COLOUR = (70, 60, 50)
EYE_COLOUR = (12, 12, 12)
_MARK_DARK, _MARK_LIGHT = (20, 20, 20), (240, 240, 240)
BIRD_NOISE_STD = 3.0  # per-pixel Gaussian noise on bird pixels (grey levels)
COLOUR_JITTER = 12  # max per-channel shift of each named colour, per image
_STREAMS = {"background": 0, "pose": 1, "noise": 2, "scene": 3}


@dataclass(frozen=True)
class Sample:
    """One rendered bird.

    Attributes:
        image: RGB image, `size` x `size`.
        masks: part name (see `taxonomy.PARTS`) -> bool (H, W) array of the pixels that
            show the part after occlusion; the head mask includes the eye, the wings
            mask includes the wing pattern marks. Masks of different parts are disjoint.
        attrs: {"head": colour, "tail": colour, "wings": pattern}.
        class_name: natural-language name of `attrs`.
        seed: the seed it was rendered from.
        pose: nuisance parameters drawn from the seed (for analysis only).
    """

    image: Image.Image
    masks: dict[str, np.ndarray]
    attrs: dict[str, str]
    class_name: str
    seed: int
    pose: dict[str, float] = field(default_factory=dict)


def _rng(seed: int, stream: str) -> np.random.Generator:
    return np.random.default_rng([int(seed), _STREAMS[stream]])


def _check_seed(seed: int) -> None:
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")


def _check_seed_size(seed: int, size: int) -> None:
    _check_seed(seed)
    if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or size < 16:
        raise ValueError(f"size must be an int >= 16 (pixels), got {size!r}")


def draw_pose(seed: int, size: int) -> dict[str, float]:
    """Nuisance parameters of a bird (placement, rotation, flip, part shapes and colours)."""
    r = _rng(seed, "pose")
    scale = size * r.uniform(0.75, 0.92) / 1.1  # pixels per canonical unit; bird ~1.1 long
    return {
        "scale": scale,
        "cx": size * (0.5 + r.uniform(-0.06, 0.06)) + 0.02 * scale,
        "cy": size * (0.5 + r.uniform(-0.06, 0.06)) + 0.05 * scale,
        "angle": np.deg2rad(r.uniform(-30.0, 30.0)),
        "flip": float(r.random() < 0.5),
        "body_a": r.uniform(0.27, 0.32), "body_b": r.uniform(0.15, 0.19),
        "head_r": r.uniform(0.115, 0.145), "head_tilt": np.deg2rad(r.uniform(-25.0, 20.0)),
        "tail_len": r.uniform(0.33, 0.41), "tail_half": np.deg2rad(r.uniform(18.0, 28.0)),
        "tail_tilt": np.deg2rad(r.uniform(-20.0, 20.0)),
        "wing_len": r.uniform(0.19, 0.24), "wing_tilt": np.deg2rad(r.uniform(-20.0, 5.0)),
        "pattern_phase": r.uniform(0.0, 1.0),
        "body_colour": float(r.integers(len(BODY_COLOURS))),
        # per-channel shifts of the head (jitter_0..2) and tail (jitter_3..5) colours
        **{f"jitter_{i}": float(v) for i, v in enumerate(r.integers(-COLOUR_JITTER, COLOUR_JITTER + 1, 6))},
    }


def _canonical_grid(pose: dict[str, float], size: int) -> tuple[np.ndarray, np.ndarray]:
    """Canonical (u, v) of every pixel centre: bird faces +u, v points down."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    dx, dy = (x - pose["cx"]) / pose["scale"], (y - pose["cy"]) / pose["scale"]
    c, s = np.cos(pose["angle"]), np.sin(pose["angle"])
    u, v = c * dx + s * dy, -s * dx + c * dy
    if pose["flip"]:
        u = -u
    return u, v


def _rot(u, v, cx, cy, theta):
    """Coordinates relative to (cx, cy) in a frame rotated by theta."""
    du, dv = u - cx, v - cy
    c, s = np.cos(theta), np.sin(theta)
    return c * du + s * dv, -s * du + c * dv


def _ellipse(u, v, cx, cy, a, b, theta=0.0):
    ru, rv = _rot(u, v, cx, cy, theta)
    return (ru / a) ** 2 + (rv / b) ** 2 <= 1.0


def _head_geometry(p: dict[str, float]) -> tuple[float, float, float]:
    """Head centre (u, v) and the direction the beak points, from the neck tilt."""
    t = p["head_tilt"]
    nu, nv = 0.14, -0.02  # neck pivot on the body
    ou, ov = 0.13, -0.12  # head offset from the pivot before tilting
    hu = nu + np.cos(t) * ou + np.sin(t) * ov
    hv = nv - np.sin(t) * ou + np.cos(t) * ov
    return hu, hv, t * 0.6


def _part_regions(u, v, p: dict[str, float]) -> dict[str, np.ndarray]:
    """Region of each shape (before occlusion), keyed by paint layer name."""
    root_u, root_v = -0.18, -0.02
    tu, tv = _rot(u, v, root_u, root_v, np.pi - p["tail_tilt"])
    # a forked fan: the reach shrinks from tail_len at the edges to 0.7 * tail_len mid-fan
    spread = np.abs(np.arctan2(tv, tu)) / p["tail_half"]
    reach = p["tail_len"] * (0.7 + 0.3 * np.clip(spread, 0.0, 1.0))
    tail = (np.hypot(tu, tv) <= reach) & (spread <= 1.0) & (tu > 0)
    body = _ellipse(u, v, 0.0, 0.0, p["body_a"], p["body_b"])
    wing = _ellipse(u, v, -0.05, -0.03, p["wing_len"], 0.42 * p["wing_len"], p["wing_tilt"])
    hu, hv, look = _head_geometry(p)
    r = p["head_r"]
    bu, bv = _rot(u, v, hu + 0.8 * r, hv, -look)
    beak = (bu >= 0) & (np.abs(bv) <= 0.045 * (1.0 - bu / 0.12)) & (bu <= 0.12)
    head = np.hypot(u - hu, v - hv) <= r
    eu, ev = _rot(np.array(0.35 * r), np.array(-0.3 * r), 0.0, 0.0, look)
    eye = np.hypot(u - (hu + eu), v - (hv + ev)) <= max(0.22 * r, 0.02)
    wu, wv = _rot(u, v, -0.05, -0.03, p["wing_tilt"])
    return {"tail": tail, "body": body, "wings": wing, "beak": beak, "head": head,
            "eye": eye & head, "wu": wu, "wv": wv}


def _wing_marks(wu, wv, pattern: str, p: dict[str, float]) -> np.ndarray:
    """Pattern marks in the wing frame (stripes across the wing or a lattice of dots)."""
    if pattern == "plain":
        return np.zeros(wu.shape, dtype=bool)
    period = 0.13 * p["wing_len"] / 0.215
    if pattern == "striped":
        return np.mod(wu / period + p["pattern_phase"], 1.0) < 0.5
    gu = wu / period + p["pattern_phase"]
    row = np.floor(wv / (0.8 * period) + 0.5)
    gu = gu + 0.5 * np.mod(row, 2)
    du = (gu - np.round(gu)) * period
    dv = wv - row * 0.8 * period
    return np.hypot(du, dv) <= 0.33 * period


def _colour(name: str, p: dict[str, float], slot: int) -> np.ndarray:
    base = np.array(PART_COLOURS[name], dtype=np.float64)
    jit = np.array([p[f"jitter_{3 * slot + i}"] for i in range(3)], dtype=np.float64)
    return np.clip(base + jit, 0, 255)


def _paint_bird(attrs: dict[str, str], pose: dict[str, float], size: int):
    """Colour (H, W, 3) float, part index map (H, W) with -1 for background."""
    u, v = _canonical_grid(pose, size)
    reg = _part_regions(u, v, pose)
    body_rgb = np.array(list(BODY_COLOURS.values())[int(pose["body_colour"])], dtype=np.float64)
    wing_rgb = 0.8 * body_rgb
    mark_rgb = np.array(_MARK_DARK if wing_rgb @ (0.299, 0.587, 0.114) > 110 else _MARK_LIGHT, float)
    rgb = np.zeros((size, size, 3))
    label = np.full((size, size), -1, dtype=np.int64)
    marks = _wing_marks(reg["wu"], reg["wv"], attrs["wings"], pose) & reg["wings"]
    layers = [
        ("tail", reg["tail"], _colour(attrs["tail"], pose, 1)),
        ("body", reg["body"], body_rgb),
        ("wings", reg["wings"], wing_rgb),
        ("wings", marks, mark_rgb),
        ("beak", reg["beak"], np.array(BEAK_COLOUR, float)),
        ("head", reg["head"], _colour(attrs["head"], pose, 0)),
        ("head", reg["eye"], np.array(EYE_COLOUR, float)),
    ]
    for part, region, colour in layers:
        label[region] = PARTS.index(part)
        rgb[region] = colour
    return rgb, label


def make_background(seed: int, size: int = 64) -> Image.Image:
    """The exact background `make_sample(..., seed, size)` paints its bird on."""
    _check_seed_size(seed, size)
    return Image.fromarray(_bg.render_background(_rng(seed, "background"), size))


def make_sample(cls: AttrsLike, seed: int, size: int = 64) -> Sample:
    """Render one bird of a class.

    Args:
        cls: a class name from `list_classes()` or an attrs dict
            {"head": colour, "tail": colour, "wings": pattern}.
        seed: non-negative int; with `size` it fixes everything but the class.
        size: image side in pixels (the geometry scales with it).

    Returns:
        A `Sample`; deterministic in (cls, seed, size).
    """
    attrs = parse_class(cls)
    _check_seed_size(seed, size)
    pose = draw_pose(seed, size)
    image = _bg.render_background(_rng(seed, "background"), size).astype(np.float64)
    rgb, label = _paint_bird(attrs, pose, size)
    bird = label >= 0
    noise = _rng(seed, "noise").normal(0.0, BIRD_NOISE_STD, size=(size, size, 3))
    image[bird] = rgb[bird] + noise[bird]
    image = np.clip(np.round(image), 0, 255).astype(np.uint8)
    masks = {part: label == i for i, part in enumerate(PARTS)}
    return Sample(Image.fromarray(image), masks, attrs, class_name(attrs), int(seed), pose)


def make_scene(cls: AttrsLike, seed: int, size: int = 64, subject_scale: float = 1.0) -> Sample:
    """A small subject in a large photo: the bird of `make_sample(cls, seed, size)` on a cluttered
    canvas `subject_scale` times its size.

    The canvas is round(size / subject_scale) pixels square with its own background (same
    distractors, drawn at the canvas's size); only the bird's pixels are pasted, at a place
    drawn from the seed, so no square tile gives it away. Masks and pose are the canvas's.
    `subject_scale` 1 is `make_sample` itself.
    """
    if not 0 < subject_scale <= 1:
        raise ValueError(f"subject_scale must be in (0, 1], got {subject_scale!r}")
    tile = make_sample(cls, seed, size)
    if subject_scale == 1:
        return tile
    side = int(round(size / subject_scale))
    r = _rng(seed, "scene")
    x0, y0 = (int(v) for v in r.integers(0, side - size + 1, size=2))
    canvas = _bg.render_background(r, side)
    bird = np.logical_or.reduce(list(tile.masks.values()))
    canvas[y0:y0 + size, x0:x0 + size][bird] = np.asarray(tile.image)[bird]
    masks = {}
    for part, mask in tile.masks.items():
        masks[part] = np.zeros((side, side), dtype=bool)
        masks[part][y0:y0 + size, x0:x0 + size] = mask
    pose = {**tile.pose, "scene_x": float(x0), "scene_y": float(y0), "scene_side": float(side)}
    return Sample(Image.fromarray(canvas), masks, tile.attrs, tile.class_name, tile.seed, pose)


def sample_seeds(n: int, seed: int) -> list[int]:
    """`n` per-sample seeds derived from a dataset seed (distinct datasets never share)."""
    if not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    _check_seed(seed)
    state = np.random.SeedSequence([int(seed), 0x5EED]).generate_state(max(n, 1), dtype=np.uint64)
    return [int(s >> np.uint64(1)) for s in state[:n]]


def make_dataset(n: int, seed: int = 0, split: str = "train", size: int = 64,
                 subject_scale: float = 1.0) -> list[Sample]:
    """`n` samples cycling through the classes of a split (balanced), deterministic.

    Sample k has class `list_classes(split)[k % n_classes]` and seed `sample_seeds(n, seed)[k]`,
    so datasets built with different `seed` share no images (up to 63-bit seed collisions).
    With `subject_scale` below 1 each bird is a small subject on a larger canvas (`make_scene`).
    """
    from .taxonomy import list_classes

    classes = list_classes(split)
    return [make_scene(classes[k % len(classes)], s, size, subject_scale)
            for k, s in enumerate(sample_seeds(n, seed))]
