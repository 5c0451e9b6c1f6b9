"""Options shared by the verbs that load a model; choices come from the registries."""
from __future__ import annotations

import click

from ..backends import list_backends


def model_options(func):
    """--model, --pretrained, --model-config, --backend, --device, --image-size."""
    options = [
        click.option("--model", "model", default="toy", show_default=True, metavar="NAME",
                     help="open_clip architecture (ViT-B-16), hf-hub:ORG/REPO, local-dir:PATH, or toy."),
        click.option("--pretrained", default=None, metavar="TAG|PATH",
                     help="Weights tag (e.g. openai) or a .safetensors/.pt/.bin file."),
        click.option("--model-config", type=click.Path(dir_okay=False), default=None, metavar="JSON",
                     help="open_clip model config for a custom architecture."),
        click.option("--backend", type=click.Choice(list_backends()), default="open_clip", show_default=True),
        click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True),
        click.option("--image-size", type=click.IntRange(min=1), default=None, metavar="N",
                     help="Run the image tower at N x N (position embeddings resampled)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def load_localizer(model, pretrained, model_config, backend, device, image_size):
    from ..localizer import Localizer

    return Localizer.from_pretrained(model, pretrained, model_config=model_config, backend=backend,
                                     device=device, image_size=image_size)
