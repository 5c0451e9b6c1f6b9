"""`zsfinercam batch INPUT... --concepts C --out DIR`: maps for many images, resumable."""
from __future__ import annotations

from pathlib import Path

import click

from ..batch.run import DEFAULT_BATCH_SIZE, ENGINES, MANIFEST_NAME
from ..errors import UsageError, WorkError
from .flags import (THREADS, contrast_options, kernel_option, load_localizer, locate_options, max_pixels_option,
                    method_option, model_options, run_options, zoom_options)


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
@click.option("--engine", type=click.Choice(ENGINES), default="local", show_default=True,
              help="Where maps are made: this process, or an actor pool on a Ray cluster (pip install "
                   "\"zsfinercam[ray]\"); both write the same files.")
@click.option("--ray-address", default=None, metavar="ADDR",
              help="--engine ray: join this cluster (\"auto\" or HOST:PORT); "
                   "default: start one on this machine.")
@click.option("--workers", type=click.IntRange(min=1), default=None, metavar="N",
              help="--engine ray: map workers, each with its own copy of the model [default: 1].")
@click.option("--gpus-per-worker", type=click.FloatRange(min=0), default=None, metavar="G",
              help="--engine ray: GPUs per worker (fractions share one) [default: 0].")
@click.option("--cpus-per-worker", type=click.FloatRange(min=0), default=None, metavar="C",
              help="--engine ray: CPUs per worker [default: 1].")
@click.option("--max-retries", type=click.IntRange(min=0), default=None, metavar="N",
              help="--engine ray: retries of a chunk whose worker dies (a crash, out of memory); then it is "
                   "split to find the image at fault, which is recorded as failed [default: 2].")
@max_pixels_option
@contrast_options
@zoom_options
@method_option
@model_options
@kernel_option
@run_options
def batch(inputs, concepts, out, recursive, resume, batch_size, engine, ray_address, workers, gpus_per_worker,
          cpus_per_worker, max_retries, max_pixels, model, pretrained, model_config, backend, device, image_size,
          kernel, **contrast):
    """Map CONCEPTS in every image of INPUT (files, folders, glob patterns) into --out.

    Each image gets one JSON record in OUT/manifest.jsonl (status, error, files, peak, bbox,
    scores, references), written as it goes; a file that cannot be read is recorded and the
    run goes on. Exit status 1 when any image failed.

    Example: zsfinercam batch photos/ --concepts "red-tailed hawk" --vs "red-shouldered hawk" --out maps
    """
    from ..batch.run import check_out_dir, find_images, run_batch
    from ..options import unique_concepts
    from ..io.progress import talking

    ray = _ray_options(engine, ray_address, workers, gpus_per_worker, cpus_per_worker, max_retries)
    options = locate_options(**contrast, backend=backend)
    names = unique_concepts(concepts)
    check_out_dir(out, resume)
    images = find_images(inputs, recursive=recursive, exclude=out)
    loc = load_localizer(model, pretrained, model_config, backend, device, image_size, max_pixels, kernel)
    summary = run_batch(loc, images, out, names, resume=resume, batch_size=batch_size, engine=engine, ray=ray,
                        options=options, progress=None if talking() else False)
    click.echo(summary.line())
    if summary.failed:
        raise WorkError(f"{summary.failed} of {len(images)} images failed; their errors are in {summary.manifest}")


def _ray_options(engine, address, workers, gpus, cpus, max_retries):
    """RayOptions for --engine ray (Ray itself checked before any model is loaded), --threads
    included; None for local."""
    given = {"--ray-address": address, "--workers": workers, "--gpus-per-worker": gpus, "--cpus-per-worker": cpus,
             "--max-retries": max_retries}
    if engine != "ray":
        named = [k for k, v in given.items() if v is not None]
        if named:
            raise UsageError(f"{named[0]} applies to --engine ray only; add --engine ray or drop it")
        return None
    from ..batch.ray_engine import DEFAULT_MAX_RETRIES, RayOptions, import_ray

    import_ray(local=address is None)
    return RayOptions(address=address, workers=workers or 1, gpus_per_worker=gpus or 0.0,
                      cpus_per_worker=1.0 if cpus is None else cpus,
                      max_retries=DEFAULT_MAX_RETRIES if max_retries is None else max_retries,
                      threads=click.get_current_context().meta.get(THREADS))
