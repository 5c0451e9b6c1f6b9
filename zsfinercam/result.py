"""The result of one localisation: validated, renderable, saveable."""
from __future__ import annotations

import functools
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
from PIL import Image

from .io import render
from .io.files import (HEATMAP_FORMATS, SAVE_KINDS, atomic_write, check_save_kinds, json_bytes, result_paths,
                       result_stem, source_stem)

if TYPE_CHECKING:
    from .core.faithfulness import Faithfulness

LOGIT = "logit"  # the objective a base-alone map records: the concept's logit, no references
DISPLAY_SIZE = 384  # pixels on the longer side of an overlay shown in a notebook, at least
MAX_DISPLAY_SIZE = 768


@dataclass
class LocateResult:
    """Where the evidence for `concept` is in one image.

    `token_map` is the raw map on the patch grid (ReLU'd, not normalised), kept so
    maps can be compared across concepts; `heatmap` is its min-max normalisation
    upsampled to the original image size, for display. The heatmap is made on first
    use, so results of many concepts cost little until they are shown.

    A zoomed result (`zoom`, see `zsfinercam.zoom`) was mapped in `window`, a square
    (x0, y0, x1, y1) of the image in pixels with exclusive ends: its token maps lie on that
    window's patch grid, its heatmap is 0 outside the window, and peak and box are in
    pixels of the whole image. `window` None: the map covers the whole image (for a zoomed
    result: no window scored above the whole image, see `zsfinercam.zoom`).
    """

    concept: str
    references: tuple[str, ...]
    scores: dict[str, float]  # logit of the target and of every concept it was compared with
    token_map: np.ndarray  # (h, w) float32 >= 0
    image: np.ndarray = field(repr=False)  # (H, W, 3) uint8, the image as loaded
    method: str = "finer"  # options.METHODS: "finer" or "base" (the CAM base alone)
    objective: str = "weighted"  # options.OBJECTIVES for Finer-CAM; LOGIT for the base alone
    alpha: float = 1.0
    contrast: str = "vs"  # how references were chosen: "vs", "logits", "none"
    source: str = "image"
    norm_map: np.ndarray | None = field(default=None, repr=False)  # (h, w) min-max of token_map; None: computed
    base: str = field(kw_only=True)  # the CAM base used, resolved (options.BASES)
    templates: str | tuple[str, ...] | None = field(default=None, kw_only=True)  # as given; None: the model's
    zoom: bool = False  # asked for zoom (LocateOptions.zoom)
    zoom_on: str | None = None  # the text that found the window; None: the concept
    window: tuple[int, int, int, int] | None = None  # where the map was made (see above); None: whole image
    # how much the map's objective rests on its top tokens (core.faithfulness); None: not asked for
    faithfulness: "Faithfulness | None" = field(default=None, repr=False)

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
        if self.window is not None:
            self.window = _check_window(self.window, self.image.shape[:2])

    @functools.cached_property
    def heatmap(self) -> np.ndarray:
        """float32 (H, W) in [0, 1] at the image's size: the normalised map, upsampled bilinearly."""
        return self.map_at(self.image.shape[:2])

    def map_at(self, size: tuple[int, int]) -> np.ndarray:
        """The normalised map drawn at `size` (H, W), the window (if any) scaled to it."""
        return render.placed(self.norm_map, size, self.window, self.image.shape[:2])

    @property
    def empty(self) -> bool:
        """True when no token stands out: the raw map is 0 everywhere after the ReLU (the
        references outscore the concept everywhere) or flat. Such a map has no peak and no box."""
        return not np.any(self.norm_map > 0)

    def probabilities(self) -> dict[str, float]:
        """Softmax of the logits of the concept and its references, by name (the concept first)."""
        names = [self.concept, *self.references]
        z = np.array([self.scores[n] for n in names], dtype=np.float64)
        e = np.exp(z - z.max())
        return dict(zip(names, (e / e.sum()).tolist()))

    @property
    def probability(self) -> float | None:
        """The concept's probability against its references (`probabilities`, at the concept).
        None without references."""
        return self.probabilities()[self.concept] if self.references else None

    @functools.cached_property
    def peak(self) -> tuple[int, int] | None:
        """(x, y) in image pixels of the heatmap's maximum; None for an empty map (see `empty`)."""
        return None if self.empty else render.peak(self.heatmap)

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

    def overlay(self, alpha: float = render.DEFAULT_ALPHA, caption: bool = False,
                min_side: int = render.MIN_OVERLAY_SIDE, size: int | None = None) -> Image.Image:
        """The heatmap in JET colours over the image, blended in proportion to the map (see
        `render.overlay`).

        Args:
            alpha: opacity of the colour where the map is hottest.
            caption: add a band below with the concept, its logit and probability, the
                references' logits, and a colour bar.
            min_side: images smaller than this on their long side are enlarged to it (the
                map is upsampled straight to the drawn size); `heatmap` keeps the image's size.
            size: when given, the result is scaled so its longer side has that many pixels.
        """
        h, w = self.image.shape[:2]
        scale = max(1.0, min_side / max(h, w))
        if scale == 1.0:
            image, heat = Image.fromarray(self.image), self.heatmap
        else:
            drawn = (round(h * scale), round(w * scale))
            image = Image.fromarray(self.image).resize(drawn[::-1], Image.BICUBIC)
            heat = self.map_at(drawn)
        out = render.overlay(image, heat, alpha)
        if self.window is not None:
            out = render.outline(out, self.window, (h, w))
        out = render.captioned(out, self.caption_lines()) if caption else out
        return out if size is None else scaled(out, size)

    def show(self, size: int = DISPLAY_SIZE) -> None:
        """Display the overlay (in a notebook, else in the system's image viewer)."""
        show_image(self.overlay(size=size))

    def _repr_png_(self) -> bytes:
        return png_bytes(self.overlay(size=display_size(self.image.shape[:2])))

    def __repr__(self) -> str:
        refs = ", ".join(self.references) or "-"
        return (f"LocateResult({self.concept!r}, score {self.scores[self.concept]:.3f}, vs [{refs}], "
                f"peak {self.peak}, bbox {self.bbox()}, {self.method}, base {self.base}"
                f"{f', window {self.window}' if self.zoom else ''})")

    def caption_lines(self) -> list[str]:
        """Concept with its logit and probability; then each reference with its logit."""
        p = self.probability
        head = f"{self.concept}   z {self.scores[self.concept]:.2f}" + (f"   p {p:.2f}" if p is not None else "")
        refs = ", ".join(f"{r} ({self.scores[r]:.2f})" for r in self.references) or "-"
        where = "  (empty map: no peak)" if self.empty else ""
        faith = f"   faithfulness {self.faithfulness_text}" if self.faithfulness is not None else ""
        return [head + where, f"vs {refs}   [{self.method}, {self.objective}, alpha {self.alpha:g}, {self.base}]{faith}"]

    @property
    def faithfulness_text(self) -> str:
        """The faithfulness score as shown ("0.42"), "-" for an empty map, "" when not asked for."""
        if self.faithfulness is None:
            return ""
        return "-" if self.faithfulness.score is None else f"{self.faithfulness.score:.2f}"

    def to_dict(self) -> dict:
        """JSON-ready summary (no image pixels; the token map as nested lists)."""
        return {
            "concept": self.concept,
            "references": list(self.references),
            "scores": {k: round(float(v), 6) for k, v in self.scores.items()},
            "probability": None if (p := self.probability) is None else round(p, 6),
            **self.settings(),
            "source": self.source,
            "image_size": [int(self.image.shape[1]), int(self.image.shape[0])],
            **self.location(),
            "zoom": self.zoom,
            "zoom_on": self.zoom_on,
            "token_map": np.round(self.token_map, 6).tolist(),
            **({} if self.faithfulness is None else {"faithfulness": self.faithfulness.to_dict()}),
        }

    def location(self) -> dict:
        """{"peak": [x, y], "bbox": [x0, y0, x1, y1], "window": [x0, y0, x1, y1]} in image pixels; peak
        and box None for an empty map, the window None where the map covers the whole image (no zoom)."""
        box = self.bbox()
        return {"peak": list(self.peak) if self.peak else None, "bbox": list(box) if box else None,
                "window": list(self.window) if self.window else None}

    def settings(self) -> dict:
        """How this map was made, as the result records it: method, objective, alpha, base,
        templates and contrast. With the image, the concept and the references they fix the map."""
        templates = list(self.templates) if isinstance(self.templates, tuple) else self.templates
        settings = {"method": self.method, "objective": self.objective, "alpha": self.alpha, "base": self.base,
                    "templates": templates, "contrast": self.contrast}
        if self.zoom:
            settings.update(zoom=True, zoom_on=self.zoom_on)
        if self.faithfulness is not None:  # a rerun without it must not replace the file that has it
            settings["faithfulness"] = self.faithfulness.mode
        return settings

    def default_stem(self) -> str:
        """The stem of this result's files, by the one naming rule (`files.result_stem`) every
        surface uses: the image's name (`source`), the concept, `settings()` and the references."""
        return result_stem(source_stem(self.source), self.concept, self.settings(), self.references)

    def save(self, directory: str | os.PathLike, stem: str | None = None, files: Sequence[str] = SAVE_KINDS,
             heatmap_format: str = "npy", caption: bool = False) -> dict[str, str]:
        """Write <stem>_overlay.png, <stem>_heatmap.npy (or .png) and <stem>.json; returns their paths.

        Args:
            files: which of SAVE_KINDS ("overlay", "heatmap", "json") to write.
            heatmap_format: one of HEATMAP_FORMATS: "npy" float32 (lossless), "npy16" float16
                .npy, "png16" 16-bit greyscale PNG (value * 65535); the compact ones are
                within 1e-3 of the map. Read any of them back with `load_heatmap`.
            caption: caption and colour bar on the overlay (see `overlay`).

        Files are written atomically (temporary file, then rename), with the umask's permissions.
        `stem` defaults to `default_stem()`. The JSON names its files relative to its own folder
        (they lie beside it), so the folder can be moved.
        """
        kinds = check_save_kinds(files)
        if heatmap_format not in HEATMAP_FORMATS:
            raise ValueError(f"unknown heatmap format {heatmap_format!r}; choose one of {', '.join(HEATMAP_FORMATS)}")
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        paths = result_paths(out, stem or self.default_stem(), kinds, heatmap_format)
        if "overlay" in paths:
            atomic_write(paths["overlay"],
                         lambda f: self.overlay(caption=caption).save(f, format="PNG", compress_level=1))
        if "heatmap" in paths:
            atomic_write(paths["heatmap"], lambda f: f.write(heatmap_bytes(self.heatmap, heatmap_format)))
        if "json" in paths:
            record = {**self.to_dict(), "files": {k: v.name for k, v in paths.items()}}  # beside the JSON
            atomic_write(paths["json"], lambda f: f.write(json_bytes(record, indent=1)))
        return {k: str(v) for k, v in paths.items()}


def _check_window(window, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """`window` as 4 ints (x0, y0, x1, y1) inside an image of `shape` (H, W), non-empty."""
    box = tuple(int(v) for v in window)
    h, w = shape
    if len(box) != 4 or not (0 <= box[0] < box[2] <= w and 0 <= box[1] < box[3] <= h):
        raise ValueError(f"expected a window (x0, y0, x1, y1) inside the {w}x{h} image, got {window}")
    return box


def display_size(shape: tuple[int, int]) -> int:
    """Longer side for notebook display: the image's own, kept within DISPLAY_SIZE..MAX_DISPLAY_SIZE."""
    return min(max(max(shape), DISPLAY_SIZE), MAX_DISPLAY_SIZE)


def heatmap_bytes(heatmap: np.ndarray, heatmap_format: str = "npy") -> bytes:
    """A [0, 1] heatmap as the bytes of a file in `heatmap_format` (see `LocateResult.save`)."""
    if heatmap_format == "png16":
        import cv2

        ok, data = cv2.imencode(".png", np.round(np.clip(heatmap, 0, 1) * 65535).astype(np.uint16),
                                [cv2.IMWRITE_PNG_COMPRESSION, 1])
        if not ok:
            raise OSError("could not encode the heatmap as a 16-bit PNG")
        return data.tobytes()
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(heatmap, dtype=np.float16 if heatmap_format == "npy16" else np.float32))
    return buffer.getvalue()


def load_heatmap(path: str | os.PathLike) -> np.ndarray:
    """A heatmap file written by `LocateResult.save`, in any format, as float32 (H, W) in [0, 1]."""
    path = Path(path)
    if path.suffix.lower() == ".png":
        import cv2

        data = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if data is None or data.dtype != np.uint16 or data.ndim != 2:
            raise ValueError(f"{path} is not a 16-bit greyscale heatmap PNG")
        return data.astype(np.float32) / 65535.0
    return np.load(path).astype(np.float32)


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

