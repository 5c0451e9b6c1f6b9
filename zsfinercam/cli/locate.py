"""`zsfinercam locate IMAGE CONCEPT...`: maps for concepts in one image."""
from __future__ import annotations

from pathlib import Path

import click

from .options import (contrast_options, load_localizer, locate_options, max_pixels_option, method_option,
                      model_options)

@click.command()
@click.argument("image", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("concepts", nargs=-1, required=True)
@contrast_options
@method_option
@model_options
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("zsfinercam_out"),
              show_default=True, help="Folder for overlays, heatmaps (.npy) and JSON.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per concept on stdout.")
@max_pixels_option
def locate(image, concepts, model, pretrained, model_config, backend, device, image_size, out, as_json,
           max_pixels, **contrast):
    """Show where IMAGE holds the evidence for each CONCEPT, against similar concepts.

    Examples:

      zsfinercam locate bird.jpg "red-tailed hawk" --vs "red-shouldered hawk"

      zsfinercam locate bird.jpg "red-tailed hawk" --vocab cub200 --contrast text

      zsfinercam locate bird.jpg "red tail" --parts

    A concept given twice is mapped once (with a warning).
    """
    from ..files import image_stem, json_bytes
    from ..text import unique_concepts

    options = locate_options(**contrast)
    names = unique_concepts(concepts)
    loc = load_localizer(model, pretrained, model_config, backend, device, image_size, max_pixels)
    results = loc.locate_many(str(image), names, options)
    prefix = image_stem(image)
    for res in results:
        files = _save(res, out, prefix, image)
        if as_json:
            record = {k: v for k, v in res.to_dict().items() if k != "token_map"}
            click.echo(json_bytes({**record, "files": files}).decode())
        else:
            click.echo(_summary(res, files))


def _save(res, out: Path, prefix: str, image: Path) -> dict[str, str]:
    from ..files import refuse_overwriting_inputs, result_paths, safe_stem

    stem = f"{prefix}_{safe_stem(res.concept)}"
    refuse_overwriting_inputs(result_paths(out, stem).values(), [image])
    return res.save(out, stem)


def _summary(res, files: dict[str, str]) -> str:
    refs = ", ".join(res.references) or "-"
    box = res.bbox()
    return (f"{res.concept}: score {res.scores[res.concept]:.3f} vs [{refs}] peak {res.peak} "
            f"bbox {box if box else '-'} -> {files['overlay']}")
