"""Several concepts side by side: the grid a person looks at while iterating on prompts.

A column per concept; rows the CAM base alone (the row label names it), Finer-CAM on that
base and their difference (red: evidence Finer-CAM adds, blue: shared evidence it removes).
Captions give each concept's logit and its references. Rendering only: the results come
from `Localizer.compare`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from . import render
from .result import LocateResult

ROWS = ("Grad-CAM", "Finer-CAM", "Finer - Grad")  # the row labels with the Grad-CAM base
BASE_NAMES = {"gradcam": ("Grad-CAM", "Grad"), "hirescam": ("HiResCAM", "HiRes"), "layercam": ("Layer-CAM", "Layer")}
LABEL_WIDTH = 96  # left margin holding the row labels, pixels
LINE_HEIGHT = 14  # caption line pitch, pixels
CAPTION_LINES = 4  # concept (two lines), score, references
CAPTION_HEIGHT = CAPTION_LINES * LINE_HEIGHT + 6
FONT_SIZE = 11
DEFAULT_CELL = 192  # cell width, pixels
MAX_ASPECT = 4.0  # cells are at most this many times taller than wide, or wider than tall


@dataclass
class Comparison:
    """Base-alone ("gradcam", whatever the base) and Finer-CAM results of the same concepts on one image."""

    gradcam: list[LocateResult]
    finer: list[LocateResult]

    def __post_init__(self) -> None:
        if len(self.gradcam) != len(self.finer) or not self.finer:
            raise ValueError(f"expected one Grad-CAM and one Finer-CAM result per concept, "
                             f"got {len(self.gradcam)} and {len(self.finer)}")

    def __repr__(self) -> str:
        parts = [f"{f.concept!r} {f.scores[f.concept]:.3f} vs [{', '.join(f.references) or '-'}] peak {f.peak}"
                 for f in self.finer]
        return f"Comparison({'; '.join(parts)})"

    def _repr_png_(self) -> bytes:
        from .result import png_bytes

        return png_bytes(self.grid())

    @property
    def base(self) -> str:
        """The CAM base of both rows (options.BASES)."""
        return self.finer[0].base

    @property
    def rows(self) -> tuple[str, str, str]:
        """Row labels: the base alone, Finer-CAM, their difference (ROWS for the Grad-CAM base)."""
        name, short = BASE_NAMES.get(self.base, (self.base, self.base))
        return name, "Finer-CAM", f"Finer - {short}"

    @property
    def concepts(self) -> list[str]:
        return [r.concept for r in self.finer]

    def difference(self, i: int) -> np.ndarray:
        """Finer-CAM minus Grad-CAM heatmap of concept i, float32 (H, W) in [-1, 1]."""
        return self.finer[i].heatmap - self.gradcam[i].heatmap

    def cell_height(self, cell: int) -> int:
        """Height of a cell `cell` pixels wide: the image's aspect ratio, kept within MAX_ASPECT."""
        h, w = self.finer[0].image.shape[:2]
        return max(1, round(cell * min(max(h / w, 1 / MAX_ASPECT), MAX_ASPECT)))

    def cells(self, i: int, cell: int) -> list[np.ndarray]:
        """The three cells of concept i, RGB uint8 (cell height, cell, 3). The image is shrunk to
        the cell first and the token maps upsampled straight to it, so a large photo costs
        no more than a small one."""
        size = (self.cell_height(cell), cell)
        image = np.asarray(Image.fromarray(self.finer[i].image).resize(size[::-1], Image.BILINEAR))
        grad, finer = (render.upsample(r.norm_map, size) for r in (self.gradcam[i], self.finer[i]))
        return [render.overlay(image, grad), render.overlay(image, finer), diverging(image, finer - grad)]

    def grid(self, cell: int = DEFAULT_CELL) -> Image.Image:
        """The grid as one RGB image: (LABEL_WIDTH + K * cell) wide and CAPTION_HEIGHT + 3 cell
        heights tall (see `cell_height`)."""
        if not isinstance(cell, int) or isinstance(cell, bool) or cell < 16:
            raise ValueError(f"cell must be an integer >= 16 pixels, got {cell!r}")
        ch = self.cell_height(cell)
        canvas = Image.new("RGB", (LABEL_WIDTH + len(self.finer) * cell, CAPTION_HEIGHT + len(ROWS) * ch), "white")
        draw, font = ImageDraw.Draw(canvas), _font()
        for r, label in enumerate(self.rows):
            draw.text((4, CAPTION_HEIGHT + r * ch + ch // 2), label, fill="black", font=font, anchor="lm")
        for i, finer in enumerate(self.finer):
            x = LABEL_WIDTH + i * cell
            for r, im in enumerate(self.cells(i, cell)):
                canvas.paste(Image.fromarray(im), (x, CAPTION_HEIGHT + r * ch))
            for line, text in enumerate(_caption(draw, finer, font, cell - 6)):
                draw.text((x + 3, 3 + line * LINE_HEIGHT), text, fill="black", font=font)
        return canvas

    def to_dict(self) -> dict:
        """JSON-ready summary: per concept its score, references, and both maps' peak and box."""
        def where(res: LocateResult) -> dict:
            box = res.bbox()
            return {"peak": list(res.peak), "bbox": list(box) if box else None}

        return {"source": self.finer[0].source, "base": self.base, "rows": list(self.rows), "concepts": [
            {"concept": f.concept, "score": round(float(f.scores[f.concept]), 6), "contrast": f.contrast,
             "references": list(f.references), "gradcam": where(g), "finer": where(f)}
            for g, f in zip(self.gradcam, self.finer)]}


def diverging(image: np.ndarray, diff: np.ndarray) -> np.ndarray:
    """A signed map in [-1, 1] over a pale grey copy of the image: red where positive,
    blue where negative, the colour's opacity its magnitude. Returns RGB uint8."""
    grey = image.astype(np.float32).mean(axis=-1, keepdims=True)
    base = 0.35 * grey + 0.65 * 255.0  # pale, so the colours read
    d = np.clip(diff, -1.0, 1.0)[..., None].astype(np.float32)
    colour = np.where(d >= 0, np.array([220.0, 30.0, 30.0]), np.array([30.0, 60.0, 220.0]))
    out = (1.0 - np.abs(d)) * base + np.abs(d) * colour
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def _caption(draw: ImageDraw.ImageDraw, res: LocateResult, font, width: int) -> list[str]:
    """Concept on up to two lines, then its logit and contrast, then its references."""
    words, first = res.concept.split(), ""
    while words and draw.textlength(f"{first} {words[0]}".strip(), font=font) <= width:
        first = f"{first} {words.pop(0)}".strip()
    name = [first, " ".join(words)] if first else [_fit(draw, res.concept, font, width), ""]
    refs = ", ".join(res.references) or "-"
    lines = [*name, f"z {res.scores[res.concept]:.2f}  ({res.contrast})", f"vs {refs}"]
    return [_fit(draw, line, font, width) for line in lines]


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    """`text` cut with '...' so it fits `width` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."


def _font():
    try:
        return ImageFont.load_default(size=FONT_SIZE)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()
