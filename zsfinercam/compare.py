"""Several concepts side by side: the grid a person looks at while iterating on prompts.

A column per concept; rows the CAM base alone (the row label names it), Finer-CAM on that
base and their difference (red: evidence Finer-CAM adds, blue: shared evidence it removes).
Captions give each concept's logit, its probability against its references and the
references' logits; a legend explains the colours. Rendering only: the results come from
`Localizer.compare`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from .core.bases import get_base
from .io import render
from .result import LocateResult

ROW_COUNT = 3  # the base alone, Finer-CAM, their difference (labels: `Comparison.rows`)
DEFAULT_CELL = 192  # cell width, pixels
MAX_ASPECT = 4.0  # cells are at most this many times taller than wide, or wider than tall
LEGEND = ("{0}, {1}: each map scaled to its own maximum, colour from low to high",
          "{2}: red = evidence Finer-CAM adds, blue = shared evidence it removes")  # .format(*rows)


@dataclass(frozen=True)
class Layout:
    """Pixel sizes of a grid (see `Comparison.layout`)."""

    font_size: int
    pitch: int  # text line pitch
    label_width: int  # left margin holding the row labels
    caption_height: int  # band above the cells holding each column's caption
    cell_width: int
    cell_height: int
    legend_height: int  # band below the cells holding the colour legends

    def size(self, columns: int) -> tuple[int, int]:
        """(width, height) of a grid with `columns` concepts."""
        return (self.label_width + columns * self.cell_width,
                self.caption_height + ROW_COUNT * self.cell_height + self.legend_height)


@dataclass
class Comparison:
    """Results of the CAM base alone and of Finer-CAM (on that base) for the same concepts on one image."""

    base_alone: list[LocateResult]
    finer: list[LocateResult]

    def __post_init__(self) -> None:
        if len(self.base_alone) != len(self.finer) or not self.finer:
            raise ValueError(f"expected one base-alone and one Finer-CAM result per concept, "
                             f"got {len(self.base_alone)} and {len(self.finer)}")

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
        """Row labels: the base alone, Finer-CAM, their difference."""
        base = get_base(self.base)
        return base.title, "Finer-CAM", f"Finer - {base.short}"

    @property
    def concepts(self) -> list[str]:
        return [r.concept for r in self.finer]

    def difference(self, i: int) -> np.ndarray:
        """Finer-CAM minus base-alone heatmap of concept i, float32 (H, W) in [-1, 1]."""
        return self.finer[i].heatmap - self.base_alone[i].heatmap

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
        alone, finer = (r.map_at(size) for r in (self.base_alone[i], self.finer[i]))
        cells = [render.overlay(image, alone), render.overlay(image, finer), diverging(image, finer - alone)]
        window, frame = self.finer[i].window, self.finer[i].image.shape[:2]
        return cells if window is None else [render.outline(c, window, frame) for c in cells]

    def layout(self, cell: int = DEFAULT_CELL) -> Layout:
        """The grid's sizes for cells `cell` pixels wide: the font grows with the cell, captions
        are as tall as the longest one (concept and references in full, wrapped)."""
        if not isinstance(cell, int) or isinstance(cell, bool) or cell < 16:
            raise ValueError(f"cell must be an integer >= 16 pixels, got {cell!r}")
        size = max(11, cell // 16)
        face, pitch = render.font(size), round(size * 1.25)
        draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
        label_width = max(round(draw.textlength(r, font=face)) for r in self.rows) + 12
        lines = max(len(self.caption(i, draw, face, cell - 6)) for i in range(len(self.finer)))
        width = label_width + len(self.finer) * cell
        legend = sum(len(render.wrap(draw, text, face, width - 12)) for text in self.legend)
        return Layout(size, pitch, label_width, lines * pitch + 6, cell, self.cell_height(cell),
                      legend * pitch + 2 * (pitch // 2 + 2) + 2 * max(6, size // 2) + 8)

    @property
    def legend(self) -> list[str]:
        """The colour legends' texts, naming this grid's rows."""
        return [text.format(*self.rows) for text in LEGEND]

    def caption(self, i: int, draw: ImageDraw.ImageDraw, face, width: int) -> list[str]:
        """Caption lines of concept i, wrapped to `width` pixels: the concept, its logit and its
        probability against its references (contrast rule), then each reference with its logit."""
        res = self.finer[i]
        p = res.probability
        score = f"z {res.scores[res.concept]:.2f}" + (f"  p {p:.2f}" if p is not None else "") + f"  ({res.contrast})"
        refs = ", ".join(f"{r} {res.scores[r]:.2f}" for r in res.references) or "-"
        texts = [res.concept, score, f"vs {refs}"] + self._faithfulness_line(i)
        return [line for text in texts for line in render.wrap(draw, text, face, width)]

    def _faithfulness_line(self, i: int) -> list[str]:
        """["faithfulness <Finer-CAM's> (<base alone's>)"] when it was asked for, else []."""
        finer, alone = self.finer[i], self.base_alone[i]
        if finer.faithfulness is None:
            return []
        return [f"faithfulness {finer.faithfulness_text} ({self.rows[0]} {alone.faithfulness_text})"]

    def grid(self, cell: int = DEFAULT_CELL) -> Image.Image:
        """The grid as one RGB image, of `layout(cell).size(number of concepts)`: captions on top,
        a row per method, the colour legends below."""
        lay = self.layout(cell)
        ch, top = lay.cell_height, lay.caption_height
        canvas = Image.new("RGB", lay.size(len(self.finer)), "white")
        draw, face = ImageDraw.Draw(canvas), render.font(lay.font_size)
        for r, label in enumerate(self.rows):
            draw.text((4, top + r * ch + ch // 2), label, fill="black", font=face, anchor="lm")
        for i in range(len(self.finer)):
            x = lay.label_width + i * cell
            for r, im in enumerate(self.cells(i, cell)):
                canvas.paste(Image.fromarray(im), (x, top + r * ch))
            for line, text in enumerate(self.caption(i, draw, face, cell - 6)):
                draw.text((x + 3, 3 + line * lay.pitch), text, fill="black", font=face)
        self._legend(canvas, draw, face, lay, top + ROW_COUNT * ch + 4)
        return canvas

    def _legend(self, canvas: Image.Image, draw: ImageDraw.ImageDraw, face, lay: Layout, y: int) -> None:
        """Two colour bars, each under its wrapped explanation: JET for the maps, red/blue for the difference."""
        bar_h, width = max(6, lay.font_size // 2), canvas.width - 12
        ramp = np.linspace(-1.0, 1.0, width, dtype=np.float32)[None].repeat(bar_h, axis=0)
        bars = (render.colorbar(width, bar_h),
                diverging(np.full((bar_h, width, 3), 255, np.uint8), ramp))
        for text, bar in zip(self.legend, bars):
            for line in render.wrap(draw, text, face, width):
                draw.text((6, y), line, fill="black", font=face)
                y += lay.pitch
            y += 2
            canvas.paste(Image.fromarray(bar), (6, y))
            y += bar_h + lay.pitch // 2 + 2

    def to_dict(self) -> dict:
        """JSON-ready summary: per concept its score, references, and both maps' peak and box."""
        def where(res: LocateResult) -> dict:
            faith = {} if res.faithfulness is None else {"faithfulness": res.faithfulness.to_dict()}
            return {**res.location(), **faith}

        return {"source": self.finer[0].source, "base": self.base, "rows": list(self.rows), "concepts": [
            {"concept": f.concept, "score": round(float(f.scores[f.concept]), 6),
             "probability": None if f.probability is None else round(f.probability, 6), "contrast": f.contrast,
             "references": list(f.references), "base_alone": where(a), "finer": where(f)}
            for a, f in zip(self.base_alone, self.finer)]}


def diverging(image: np.ndarray, diff: np.ndarray) -> np.ndarray:
    """A signed map in [-1, 1] over a pale grey copy of the image: red where positive,
    blue where negative, the colour's opacity its magnitude. Returns RGB uint8."""
    grey = image.astype(np.float32).mean(axis=-1, keepdims=True)
    base = 0.35 * grey + 0.65 * 255.0  # pale, so the colours read
    d = np.clip(diff, -1.0, 1.0)[..., None].astype(np.float32)
    colour = np.where(d >= 0, np.array([220.0, 30.0, 30.0]), np.array([30.0, 60.0, 220.0]))
    out = (1.0 - np.abs(d)) * base + np.abs(d) * colour
    return np.clip(np.round(out), 0, 255).astype(np.uint8)
