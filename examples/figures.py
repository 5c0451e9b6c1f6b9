"""What the figure scripts share: a row of titled panels, and a base's display name."""
from PIL import Image, ImageDraw

from zsfinercam.core.bases import get_base

PANEL = 256  # pixels per panel side


def base_title(name: str) -> str:
    """The display name of a CAM base ("hirescam" -> "HiResCAM"), for panel titles."""
    return get_base(name).title


def panel_row(panels: list[tuple[str, Image.Image]], resample=Image.NEAREST) -> Image.Image:
    """The panels side by side, each resized to PANEL x PANEL under a 24-px band holding its title."""
    out = Image.new("RGB", (PANEL * len(panels), PANEL + 24), "white")
    draw = ImageDraw.Draw(out)
    for i, (title, panel) in enumerate(panels):
        out.paste(panel.resize((PANEL, PANEL), resample), (i * PANEL, 24))
        draw.text((i * PANEL + 6, 5), title, fill="black")
    return out
