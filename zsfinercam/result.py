"""The result of one localisation: validated, renderable, saveable."""
from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from . import render

DISPLAY_SIZE = 384  # pixels on the longer side of an overlay shown in a notebook, at least
MAX_DISPLAY_SIZE = 768
TMP_PREFIX = ".tmp-"  # names of atomic_write's temporary files (a killed run may leave some)


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
    norm_map: np.ndarray | None = field(default=None, repr=False)  # (h, w) min-max of token_map; None: computed

    def __post_init__(self) -> None:
        self.token_map = np.asarray(self.token_map, dtype=np.float32)
        self.references = tuple(self.references)
        if self.token_map.ndim != 2:
            raise ValueError(f"expected token_map of shape (h, w), got {self.token_map.shape}")
        if self.image.ndim != 3 or self.image.shape[2] != 3 or self.image.dtype != np.uint8:
            raise ValueError(f"expected image (H, W, 3) uint8, got {self.image.shape} {self.image.dtype}")
        if self.norm_map is None:
            low, span = self.token_map.min(), np.ptp(self.token_map)
            self.norm_map = (self.token_map - low) / span if span > 0 else np.zeros_like(self.token_map)
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
        """Inclusive (x0, y0, x1, y1) around the hot region holding the peak (kept for the default threshold)."""
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
        return (f"LocateResult({self.concept!r}, score {self.scores[self.concept]:.3f}, vs [{refs}], "
                f"peak {self.peak}, bbox {self.bbox()}, {self.method})")

    def to_dict(self) -> dict:
        """JSON-ready summary (no image pixels; the token map as nested lists)."""
        return {
            "concept": self.concept,
            "references": list(self.references),
            "scores": {k: round(float(v), 6) for k, v in self.scores.items()},
            "method": self.method,
            "objective": self.objective,
            "alpha": self.alpha,
            "contrast": self.contrast,
            "source": self.source,
            "image_size": [int(self.image.shape[1]), int(self.image.shape[0])],
            "peak": list(self.peak),
            "bbox": list(b) if (b := self.bbox()) else None,
            "token_map": np.round(self.token_map, 6).tolist(),
        }

    def save(self, directory: str | os.PathLike, stem: str | None = None) -> dict[str, str]:
        """Write <stem>_overlay.png, <stem>_heatmap.npy and <stem>.json; returns their paths.

        Files are written atomically (temporary file, then rename).
        """
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        stem = stem or safe_stem(self.concept)
        paths = {"overlay": out / f"{stem}_overlay.png", "heatmap": out / f"{stem}_heatmap.npy",
                 "json": out / f"{stem}.json"}
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


def safe_stem(text: str, max_len: int = 48, key: str | None = None) -> str:
    """A file-name stem for any text: letters and digits kept (unicode too), the rest '-',
    cut to max_len, plus a short hash of the full text so different texts never collide.

    `key`, when given, is hashed instead of `text` (e.g. a file's full path, so that
    a.jpg in two folders gets two stems)."""
    slug = re.sub(r"[^\w]+", "-", text.strip().lower(), flags=re.UNICODE).strip("-_")[:max_len].strip("-_")
    digest = hashlib.sha1(_utf8(text if key is None else key)).hexdigest()[:8]
    return f"{slug}-{digest}" if slug else digest


def _utf8(text: str) -> bytes:
    """UTF-8 bytes of any str: a file name that is not UTF-8 (bytes Python decoded to lone
    surrogates, e.g. b'caf\\xe9' -> 'caf\\udce9') gives its original bytes, as `os.fsencode` does;
    any other lone surrogate is passed through."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")


def json_bytes(obj, **kwargs) -> bytes:
    """`obj` as UTF-8 JSON, unicode kept readable; when a str holds lone surrogates (a file name
    that is not UTF-8), everything non-ASCII is escaped instead (\\udce9), so the file is still
    valid UTF-8 and `json.loads` gives back the very same str (and path)."""
    try:
        return json.dumps(obj, ensure_ascii=False, **kwargs).encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(obj, ensure_ascii=True, **kwargs).encode("ascii")


def atomic_write(path: Path, write) -> None:
    """`write(file)` into a temporary file next to `path` (named TMP_PREFIX...), then rename it
    over `path`: readers see the old file or the new one, never a part."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=TMP_PREFIX, suffix=path.suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
