"""`zsfinercam compare IMAGE CONCEPT...`: one grid of the CAM base alone and Finer-CAM, a column per concept."""
from __future__ import annotations

from pathlib import Path

import click

from .flags import (contrast_options, kernel_option, load_localizer, locate_options, max_pixels_option,
                    model_options, run_options, zoom_options)


@click.command()
@click.argument("image", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("concepts", nargs=-1, required=True)
@contrast_options
@zoom_options
@model_options
@click.option("--cell", type=click.IntRange(min=16), default=192, show_default=True,
              help="Width of one grid cell in pixels.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("zsfinercam_out"),
              show_default=True, help="Folder for the grid PNG and its JSON.")
@click.option("--json", "as_json", is_flag=True, help="Print the grid's JSON summary on stdout.")
@max_pixels_option
@kernel_option
@run_options
def compare(image, concepts, model, pretrained, model_config, backend, device, image_size, cell, out, as_json,
            max_pixels, kernel, **contrast):
    """The CAM base alone, Finer-CAM and their difference for each CONCEPT in IMAGE, side by side.

    Example: zsfinercam compare bird.jpg "red-tailed hawk" "red-shouldered hawk" "cooper's hawk"
    """
    from ..io.files import atomic_write, image_stem, json_bytes, refuse_overwriting_inputs, result_stem
    from ..options import unique_concepts

    options = locate_options(**contrast, backend=backend)
    names = unique_concepts(concepts)
    loc = load_localizer(model, pretrained, model_config, backend, device, image_size, max_pixels, kernel)
    comparison = loc.compare(str(image), names, options)
    settings = {**comparison.finer[0].settings(), "cell": cell, "concepts": names}  # the one naming rule
    references = [r for res in comparison.finer for r in (res.concept, *res.references)]
    stem = result_stem(image_stem(image), "compare " + " ".join(names), settings, references)
    paths = {"grid": out / f"{stem}.png", "json": out / f"{stem}.json"}
    refuse_overwriting_inputs(paths.values(), [image])
    grid = comparison.grid(cell)
    out.mkdir(parents=True, exist_ok=True)
    files = {k: v.name for k, v in paths.items()}  # beside the JSON, so the folder can be moved
    record = {**comparison.to_dict(), "grid_size": list(grid.size), "files": files}
    atomic_write(paths["grid"], lambda f: grid.save(f, format="PNG"))
    atomic_write(paths["json"], lambda f: f.write(json_bytes(record, indent=1)))
    if as_json:
        click.echo(json_bytes({**record, "files": {k: str(v) for k, v in paths.items()}}).decode())
    else:
        for c in record["concepts"]:
            p = f", p {c['probability']:.3f}" if c["probability"] is not None else ""
            click.echo(f"{c['concept']}: score {c['score']:.3f}{p} vs [{', '.join(c['references']) or '-'}] "
                       f"peak {comparison.rows[0]} {_point(c['base_alone']['peak'])} "
                       f"Finer-CAM {_point(c['finer']['peak'])}{_faithfulness(c)}"
                       + (f" window {_point(c['finer']['window'])}" if options.zoom else ""))
        click.echo(f"grid {grid.size[0]}x{grid.size[1]} -> {paths['grid']}")


def _faithfulness(concept: dict) -> str:
    """' faithfulness F (base alone B)' when it was asked for ('-' for an empty map), else ''."""
    if "faithfulness" not in concept["finer"]:
        return ""
    shown = [f"{s:.2f}" if (s := concept[row]["faithfulness"]["score"]) is not None else "-"
             for row in ("finer", "base_alone")]
    return f" faithfulness {shown[0]} (base alone {shown[1]})"


def _point(peak: list[int] | None) -> str:
    """(x, y), or '-' for an empty map's missing peak."""
    return str(tuple(peak)) if peak else "-"
