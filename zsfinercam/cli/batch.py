"""`zsfinercam batch INPUT... --concepts C --out DIR`: maps for many images, resumable."""
from __future__ import annotations

from pathlib import Path

import click

from ..batch import DEFAULT_BATCH_SIZE, MANIFEST_NAME
from ..errors import WorkError
from .options import (contrast_options, load_localizer, locate_options, max_pixels_option, method_option,
                      model_options)


@click.command()
@click.argument("inputs", nargs=-1, required=True, metavar="INPUT...")
@click.option("--concepts", "-c", multiple=True, required=True, metavar="TEXT",
              help="A concept to map in every image (repeatable; duplicates are mapped once).")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help=f"Folder for the maps (one subfolder per image) and {MANIFEST_NAME}.")
@click.option("--recursive", "-r", is_flag=True, help="Also look in the subfolders of folder INPUTs.")
@click.option("--resume", is_flag=True, help="Continue the run in --out, skipping the images already done.")
@click.option("--batch-size", type=click.IntRange(min=1), default=DEFAULT_BATCH_SIZE, show_default=True,
              metavar="N", help="Images per trunk pass.")
@max_pixels_option
@contrast_options
@method_option
@model_options
def batch(inputs, concepts, out, recursive, resume, batch_size, max_pixels, model, pretrained, model_config,
          backend, device, image_size, **contrast):
    """Map CONCEPTS in every image of INPUT (files, folders, glob patterns) into --out.

    Each image gets one JSON record in OUT/manifest.jsonl (status, error, files, peak, bbox,
    scores, references), written as it goes; a file that cannot be read is recorded and the
    run goes on. Exit status 1 when any image failed.

    Example: zsfinercam batch photos/ --concepts "red-tailed hawk" --vs "red-shouldered hawk" --out maps
    """
    from ..batch import find_images, run_batch
    from ..text import unique_concepts

    options = locate_options(**contrast)
    names = unique_concepts(concepts)
    images = find_images(inputs, recursive=recursive, exclude=out)
    loc = load_localizer(model, pretrained, model_config, backend, device, image_size, max_pixels)
    summary = run_batch(loc, images, out, names, resume=resume, batch_size=batch_size, options=options)
    click.echo(summary.line())
    if summary.failed:
        raise WorkError(f"{summary.failed} of {len(images)} images failed; their errors are in {summary.manifest}")
