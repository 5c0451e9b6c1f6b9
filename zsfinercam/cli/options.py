"""Options shared by the verbs that load a model; choices come from the registries."""
from __future__ import annotations

import warnings

import click

from ..backends import list_backends
from ..images import DEFAULT_MAX_PIXELS
from ..options import BASES, DEFAULT_BASE, METHODS, OBJECTIVES, STRATEGIES, LocateOptions, OptionError


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


max_pixels_option = click.option(
    "--max-pixels", type=click.IntRange(min=1), default=DEFAULT_MAX_PIXELS, show_default=True, metavar="N",
    help="Refuse image files with more pixels (width x height) than N, a guard against decompression "
         "bombs; raise it for huge images you trust.")


def load_localizer(model, pretrained, model_config, backend, device, image_size, max_pixels=DEFAULT_MAX_PIXELS):
    from ..localizer import Localizer

    return Localizer.from_pretrained(model, pretrained, model_config=model_config, backend=backend,
                                     device=device, image_size=image_size, max_pixels=max_pixels)


def contrast_options(func):
    """What a map is computed against: --vs, --vocab, --contrast, --category, --parts,
    --part-vocab, --alpha, --objective, --base, --templates. The command receives them
    as keyword arguments; `locate_options` turns them into a LocateOptions."""
    options = [
        click.option("--vs", multiple=True, metavar="TEXT", help="A reference concept to contrast with (repeatable)."),
        click.option("--vocab", default=None, metavar="NAME|FILE",
                     help="Vocabulary to pick references from (see `zsfinercam prompts`), or a text/JSON file."),
        click.option("--contrast", type=click.Choice(STRATEGIES), default=None,
                     show_default="logits; vs with --vs, parts with --parts",
                     help="How references are chosen: closest logits on this image, nearest text "
                          "embeddings, --vs, the --category, or --parts."),
        click.option("--category", default=None, metavar="TEXT",
                     help="What the concepts are kinds of (e.g. bird), for --contrast generic; "
                          "default: the --vocab's category."),
        click.option("--parts", is_flag=True,
                     help="Attribute mode: contrast each concept with the other attributes of its part "
                          "and the same trait on other parts (from --part-vocab)."),
        click.option("--part-vocab", default="cub_parts", show_default=True, metavar="NAME|FILE",
                     help="Part vocabulary for --parts ([part] sections or a JSON 'parts' object)."),
        click.option("--alpha", type=float, default=None, show_default="1.0; 0.6 for --objective mean",
                     help="Contrast strength; 0 gives plain Grad-CAM."),
        click.option("--objective", type=click.Choice(OBJECTIVES), default="weighted", show_default=True),
        click.option("--base", type=click.Choice(BASES), default=DEFAULT_BASE, show_default=True,
                     help="CAM base: gradcam (channel weights = mean gradient), hirescam (gradient x "
                          "activation per patch) or layercam (positive gradient x activation)."),
        click.option("--templates", default=None, metavar="NAME|FILE", help="Prompt template set or file."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


method_option = click.option("--method", type=click.Choice(METHODS), default="finer", show_default=True,
                             help="finer = Finer-CAM; gradcam = plain Grad-CAM on the concept's logit.")


FLAGS = {"parts": "--part-vocab"}  # LocateOptions fields whose flag is not --<field>


def locate_options(vs, vocab, contrast, category, parts, part_vocab, alpha, objective, templates,
                   method: str = "finer", base: str = DEFAULT_BASE) -> LocateOptions:
    """The LocateOptions of contrast_options' (and method_option's) values.

    Raises:
        click.BadParameter: a value LocateOptions refuses, named by its flag (exit status 2).
    """
    if part_vocab != "cub_parts" and not parts:
        warnings.warn("--part-vocab is used only with --parts; ignored", stacklevel=2)
    try:
        return LocateOptions(vs=vs, vocab=vocab, contrast=contrast, category=category,
                             parts=part_vocab if parts else None, alpha=alpha, method=method,
                             objective=objective, base=base, templates=templates)
    except OptionError as err:
        raise click.BadParameter(str(err), param_hint=FLAGS.get(err.field, f"--{err.field.replace('_', '-')}")) \
            from None
