"""`zsfinercam lab [IMAGE...]`: the prompt lab, a local web page for trying prompts quickly."""
from __future__ import annotations

import os
from pathlib import Path

import click

from .flags import kernel_option, load_localizer, max_pixels_option, model_options, run_options

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"  # the source tree's examples, when present
EXAMPLE_IMAGES = ("bird.png",)  # inputs, not the figures that live next to them


@click.command()
@click.argument("images", nargs=-1, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@model_options
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind; 0.0.0.0 makes the page reachable from other machines.")
@click.option("--port", type=click.IntRange(1, 65535), default=7860, show_default=True)
@click.option("--share", is_flag=True, help="Also publish a temporary public gradio.live link.")
@max_pixels_option
@kernel_option
@run_options
def lab(images, model, pretrained, model_config, backend, device, image_size, host, port, share, max_pixels, kernel):
    """Open a page where new prompts on an already seen image answer in milliseconds.

    IMAGES (and the bundled examples/) are offered as examples. The model loads once;
    each new image runs the trunk once and its features are kept (least recently used
    dropped first), so editing concepts, references, rule or alpha reuses them.

    Example: zsfinercam lab --model ViT-B-16 --pretrained openai photo.jpg
    """
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported
    from ..lab.app import import_gradio, launch

    import_gradio()  # a missing extra fails before the (slow) model load
    loc = load_localizer(model, pretrained, model_config, backend, device, image_size, max_pixels, kernel)
    launch(loc, [*images, *default_examples()], host=host, port=port, share=share)


def default_examples() -> list[Path]:
    """The images in the source tree's examples/ folder (none in an installed wheel)."""
    return [EXAMPLES / name for name in EXAMPLE_IMAGES if (EXAMPLES / name).is_file()]
