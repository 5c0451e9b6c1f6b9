"""Small subjects in large photos: find the subject, map a square window around it, paste the map back.

A ViT sees a large photo as a few patches, so a bird in a corner of it gets a handful of tokens
and no map can point at its head. With zoom (`LocateOptions.zoom`) a locate call

1. finds a window on the subject (`search`): starting from the whole image, it scores square
   windows by the zero-shot logit of the concept (or of `zoom_on`, e.g. "bird") and keeps the
   best while it beats the window it came from. Each level tries the windows of SHRINK times
   the current window's shorter side at half-window stride (4 in a square), all of one level
   in one trunk pass; at most MAX_LEVELS levels, no window under MIN_SIDE of the model's input.
2. maps the concept in that window at the model's input size, references included (the
   window's features are those its score came from: no further trunk pass), and
3. returns the result with the map pasted back into the window (0 outside), peak and box in
   pixels of the whole image (`LocateResult.window`).

Several regions: only the strongest window is kept (the one whose logit is highest). No subject
(no window scores above the whole image, e.g. a subject that fills the frame, or a solid-colour
image): no zoom, the whole image is mapped from the first pass's features, and the result's
`window` is None. Windows' features stay on the ImageFeatures they came from (`windows`), so
new prompts on a zoomed, cached image cost text encoding and small matrix products.
Measured on the synthetic small-subject benchmark in docs/zoom.md.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from .options import LocateOptions, check_concepts
from .result import LocateResult

if TYPE_CHECKING:
    from .core.engine import ImageFeatures
    from .localizer import Localizer

SHRINK = 2 / 3  # a level's windows are this fraction of the shorter side of the window they refine
MAX_LEVELS = 3  # levels of refinement at most (a window of 8/27 of the image's shorter side)
MIN_GAIN = 1e-3  # logits a window must add over its parent: less is float noise between batch sizes
MIN_SIDE = 0.5  # no window smaller than this fraction of the model's input side (in image pixels)
MARGIN = 0.0  # the found window grows by this fraction of its side on every side (0: as scored, no extra pass)
STRIDE_SLACK = 0.05  # a stride may exceed half a window by this fraction before another window is added

Window = tuple[int, int, int, int]  # (x0, y0, x1, y1) in image pixels, exclusive ends


@dataclass(frozen=True)
class Found:
    """The outcome of `search`: the window (None: the whole image), its logit, the whole image's,
    and how many windows were scored (images through the trunk, besides the whole image)."""

    window: Window | None
    score: float
    whole_score: float
    scored: int


def candidate_windows(parent: Window) -> list[Window]:
    """The squares of side SHRINK x the parent's shorter side, at half-window stride, covering the
    parent from edge to edge (the positions spread evenly), in row-major order."""
    x0, y0, x1, y1 = parent
    side = max(1, round(SHRINK * min(x1 - x0, y1 - y0)))
    return [(x0 + a, y0 + b, x0 + a + side, y0 + b + side)
            for b in _positions(y1 - y0, side) for a in _positions(x1 - x0, side)]


def _positions(length: int, side: int) -> list[int]:
    """Offsets of windows of `side` along `length`: 0 and length - side, and evenly between them
    as few as keep the stride within half a window (plus STRIDE_SLACK)."""
    steps = max(0, math.ceil((length - side) / (side / 2) - STRIDE_SLACK))
    if steps == 0:
        return [0]
    return sorted({round(k * (length - side) / steps) for k in range(steps + 1)})


def with_margin(window: Window, margin: float, size: tuple[int, int]) -> Window:
    """The square `window` grown by `margin` x its side on every side, about its centre, then moved
    (not cut) to lie inside an image of `size` (H, W); its side is at most the image's shorter side."""
    x0, y0, x1, y1 = window
    h, w = size
    side = min(round((x1 - x0) * (1 + 2 * margin)), h, w)
    left = min(max(round((x0 + x1 - side) / 2), 0), w - side)
    top = min(max(round((y0 + y1 - side) / 2), 0), h - side)
    return (left, top, left + side, top + side)


def search(size: tuple[int, int], score: Callable[[list[Window]], Sequence[float]], whole_score: float,
           min_side: int, levels: int = MAX_LEVELS) -> Found:
    """The best window of an image of `size` (H, W), coarse to fine.

    Args:
        score: the logits of a list of windows (one trunk pass for them all).
        whole_score: the whole image's logit; a window is kept only when it scores higher
            than the whole image and than the window it refines (ties keep the larger).
        min_side: no window smaller than this many pixels is tried.
    """
    h, w = size
    current, best, scored = (0, 0, w, h), float(whole_score), 0
    found = None
    for _ in range(levels):
        windows = candidate_windows(current)
        if windows[0][2] - windows[0][0] < min_side or windows == [current]:
            break
        scores = [float(s) for s in score(windows)]
        scored += len(windows)
        top = int(np.argmax(scores))
        if not scores[top] > best + MIN_GAIN:  # a tie (a blank image, batch rounding) keeps the larger
            break
        current, best, found = windows[top], scores[top], windows[top]
    return Found(found, best, float(whole_score), scored)


def zoomed_maps(loc: "Localizer", feats: "ImageFeatures", concepts, options: LocateOptions) -> list[list[LocateResult]]:
    """`Localizer.locate_many` with zoom, one list of results per image: per image, a window per
    concept (or one for `zoom_on`), the concepts mapped together in each distinct window (through
    the public `locate_many` on the window's features), the maps placed back in the image."""
    names = check_concepts(concepts)
    plain = options.replace(zoom=False, zoom_on=None)
    out = []
    for b in range(len(feats)):
        found = {text: find_window(loc, feats, b, text, options.templates)
                 for text in dict.fromkeys([options.zoom_on] if options.zoom_on else names)}
        size = feats.images[b].shape[:2]
        windows = {text: f.window and with_margin(f.window, MARGIN, size) for text, f in found.items()}
        by_window: dict[Window | None, dict[str, LocateResult]] = {}
        for window in dict.fromkeys(windows.values()):
            (window_feats,) = window_features(loc, feats, b, [window])
            results = loc.locate_many(window_feats, names, plain)
            results = results[0] if window_feats.from_list else results  # the whole image, given as a list
            by_window[window] = {r.concept: _placed(r, feats, b, window, options) for r in results}
        out.append([by_window[windows[options.zoom_on or n]][n] for n in names])
    return out


def find_window(loc: "Localizer", feats: "ImageFeatures", b: int, text: str, templates=None) -> Found:
    """`search` on image b of `feats` for `text`'s zero-shot logit (the text head is the
    Localizer's, cached); windows' features are encoded once and kept on `feats`."""
    def logits(windows):
        return [loc.scores(f, [text], templates)[0][text] for f in window_features(loc, feats, b, windows)]

    image = feats.images[b]
    min_side = math.ceil(MIN_SIDE * min(loc.config.image_size))
    return search(image.shape[:2], logits, logits([None])[0], min_side, MAX_LEVELS)


def window_features(loc: "Localizer", feats: "ImageFeatures", b: int,
                    windows: Sequence[Window | None]) -> list["ImageFeatures"]:
    """Features of each window of image b (None: the whole image, the first pass's own): those
    not on `feats.windows` yet are encoded in one trunk pass and kept there."""
    if (b, None) not in feats.windows:
        feats.windows[(b, None)] = feats if len(feats) == 1 else feats[b]
    missing = [w for w in dict.fromkeys(windows) if (b, w) not in feats.windows]
    if missing:
        image = feats.images[b]
        encoded = loc.encode_image([image[y0:y1, x0:x1] for x0, y0, x1, y1 in missing])
        feats.windows.update(((b, w), encoded[i]) for i, w in enumerate(missing))
    return [feats.windows[(b, w)] for w in windows]


def _placed(res: LocateResult, feats: "ImageFeatures", b: int, window: Window | None,
            options: LocateOptions) -> LocateResult:
    """`res`, made on a window's features, as a result on the whole image b."""
    return dataclasses.replace(res, image=feats.images[b], source=feats.sources[b], window=window,
                               zoom=True, zoom_on=options.zoom_on)
