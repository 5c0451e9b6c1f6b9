"""The result of one localisation: validated, renderable, saveable."""
from __future__ import annotations

import functools
import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from . import render
from .files import atomic_write, json_bytes, result_paths, safe_stem

DISPLAY_SIZE = 384  # pixels on the longer side of an overlay shown in a notebook, at least
MAX_DISPLAY_SIZE = 768


@dataclass
class LocateResult:
    """Where the evidence for `concept` is in one image.

    `token_map` is the raw map on the patch grid (ReLU'd, not normalised), kept so
    maps can be compared across concepts; `heatmap` is its min-max normalisation
    upsampled to the original image size, for display. The heatmap is made on first
    use, so results of many concepts cost little until they are shown.
    """

    concept: str
    references: tuple[str, ...]
    scores: dict[str, float]  # logit of the target and of every concept it was compared with
    token_map: np.ndarray  # (h, w) float32 >= 0
    image: np.ndarray = field(repr=False)  # (H, W, 3) uint8, the image as loaded
    method: str = "finer"  # "finer" or "gradcam"
    objective: str = "weighted"
    alpha: float = 1.0
    contrast: str = "vs"  # how references were chosen: "vs", "logits", "none"
    source: str = "image"
    base: str = "gradcam"  # the CAM base: "gradcam", "hirescam" or "layercam" (options.BASES)
    norm_map: np.ndarray | None = field(default=None, repr=False)  # (h, w) min-max of token_map; None: computed

    def __post_init__(self) -> None:
        self.token_map = np.asarray(self.token_map, dtype=np.float32)
        self.references = tuple(self.references)
        if self.token_map.ndim != 2:
            raise ValueError(f"expected token_map of shape (h, w), got {self.token_map.shape}")
        if self.image.ndim != 3 or self.image.shape[2] != 3 or self.image.dtype != np.uint8:
            raise ValueError(f"expected image (H, W, 3) uint8, got {self.image.shape} {self.image.dtype}")
        if self.norm_map is None:
            self.norm_map = render.minmax(self.token_map)
        self.norm_map = np.asarray(self.norm_map, dtype=np.float32)
        if self.norm_map.shape != self.token_map.shape:
            raise ValueError(f"expected norm_map of shape {self.token_map.shape}, got {self.norm_map.shape}")
        if self.norm_map.size and (self.norm_map.min() < -1e-4 or self.norm_map.max() > 1 + 1e-4):
            raise ValueError("expected norm_map values in [0, 1]")
        self.norm_map = np.clip(self.norm_map, 0.0, 1.0)  # kernels may round a hair past the ends

    @functools.cached_property
    def heatmap(self) -> np.ndarray:
        """float32 (H, W) in [0, 1] at the image's size: the normalised map, upsampled bilinearly."""
        return render.upsample(self.norm_map, self.image.shape[:2])

    @functools.cached_property
    def peak(self) -> tuple[int, int]:
        """(x, y) in image pixels of the heatmap's maximum."""
        return render.peak(self.heatmap)

    def bbox(self, threshold: float = render.DEFAULT_THRESHOLD) -> tuple[int, int, int, int] | None:
        """(x0, y0, x1, y1), exclusive ends, around the hot region holding the peak; None for an empty map.

        The convention is render.py's (the same as `metrics` and `eval` manifests). The box
        for the default threshold is kept.
        """
        if threshold == render.DEFAULT_THRESHOLD:
            return self._default_bbox
        return render.bbox(self.heatmap, threshold)

    @functools.cached_property
    def _default_bbox(self) -> tuple[int, int, int, int] | None:
        return render.bbox(self.heatmap, render.DEFAULT_THRESHOLD)

    def overlay(self, alpha: float = 0.5, size: int | None = None) -> Image.Image:
        """The heatmap in JET colours over the image; `size` scales it so its longer side has
        that many pixels (small images become readable)."""
        image = render.overlay(Image.fromarray(self.image), self.heatmap, alpha)
        return image if size is None else scaled(image, size)

    def show(self, size: int = DISPLAY_SIZE) -> None:
        """Display the overlay (in a notebook, else in the system's image viewer)."""
        show_image(self.overlay(size=size))

    def _repr_png_(self) -> bytes:
        return png_bytes(self.overlay(size=display_size(self.image.shape[:2])))

    def __repr__(self) -> str:
        refs = ", ".join(self.references) or "-"
        base = "" if self.base == "gradcam" else f", base {self.base}"
        return (f"LocateResult({self.concept!r}, score {self.scores[self.concept]:.3f}, vs [{refs}], "
                f"peak {self.peak}, bbox {self.bbox()}, {self.method}{base})")

    def to_dict(self) -> dict:
        """JSON-ready summary (no image pixels; the token map as nested lists)."""
        return {
            "concept": self.concept,
            "references": list(self.references),
            "scores": {k: round(float(v), 6) for k, v in self.scores.items()},
            "method": self.method,
            "objective": self.objective,
            "alpha": self.alpha,
            "base": self.base,
            "contrast": self.contrast,
            "source": self.source,
            "image_size": [int(self.image.shape[1]), int(self.image.shape[0])],
            "peak": list(self.peak),
            "bbox": list(b) if (b := self.bbox()) else None,
            "token_map": np.round(self.token_map, 6).tolist(),
        }

    def save(self, directory: str | os.PathLike, stem: str | None = None) -> dict[str, str]:
        """Write <stem>_overlay.png, <stem>_heatmap.npy and <stem>.json; returns their paths.

        Files are written atomically (temporary file, then rename), with the umask's permissions.
        `stem` defaults to `safe_stem(concept)`.
        """
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        paths = result_paths(out, stem or safe_stem(self.concept))
        atomic_write(paths["overlay"], lambda f: self.overlay().save(f, format="PNG"))
        atomic_write(paths["heatmap"], lambda f: np.save(f, self.heatmap))
        record = {**self.to_dict(), "files": {k: str(v) for k, v in paths.items()}}
        atomic_write(paths["json"], lambda f: f.write(json_bytes(record, indent=1)))
        return {k: str(v) for k, v in paths.items()}


def display_size(shape: tuple[int, int]) -> int:
    """Longer side for notebook display: the image's own, kept within DISPLAY_SIZE..MAX_DISPLAY_SIZE."""
    return min(max(max(shape), DISPLAY_SIZE), MAX_DISPLAY_SIZE)


def scaled(image: Image.Image, size: int) -> Image.Image:
    """`image` resized (bilinear) so its longer side is `size` pixels, aspect ratio kept."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive number of pixels, got {size!r}")
    w, h = image.size
    factor = size / max(w, h)
    return image.resize((max(1, round(w * factor)), max(1, round(h * factor))), Image.BILINEAR)


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def show_image(image: Image.Image) -> None:
    """Display in IPython when running there, else in the system's image viewer."""
    try:
        from IPython.display import display
    except ImportError:
        image.show()
        return
    display(image)

