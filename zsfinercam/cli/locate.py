"""`zsfinercam locate IMAGE CONCEPT...`: maps for concepts in one image."""
from __future__ import annotations

from pathlib import Path

import click

from ..files import HEATMAP_FORMATS, SAVE_KINDS
from .options import (contrast_options, load_localizer, locate_options, max_pixels_option, method_option,
                      model_options)


def _save_kinds(ctx, param, value: str) -> tuple[str, ...]:
    """--save's comma list, checked before anything loads."""
    kinds = [k.strip() for k in value.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in SAVE_KINDS]
    if unknown or not kinds:
        raise click.BadParameter(f"expected a comma list of {', '.join(SAVE_KINDS)}, got {value!r}")
    return tuple(k for k in SAVE_KINDS if k in kinds)


@click.command()
@click.argument("image", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("concepts", nargs=-1, required=True)
@contrast_options
@method_option
@model_options
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("zsfinercam_out"),
              show_default=True, help="Folder for overlays, heatmaps (.npy) and JSON.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per concept on stdout.")
@click.option("--save", "save", default=",".join(SAVE_KINDS), show_default=True, callback=_save_kinds,
              metavar="LIST", help="Which files to write per concept, a comma list of: " + ", ".join(SAVE_KINDS) + ".")
@click.option("--heatmap-format", type=click.Choice(HEATMAP_FORMATS), default="npy", show_default=True,
              help="npy: float32, lossless; npy16: float16 .npy; png16: 16-bit greyscale PNG (value x 65535). "
                   "The compact ones are within 1e-3 of the map.")
@click.option("--caption", is_flag=True, help="Caption the overlay (concept, scores, references) with a colour bar.")
@max_pixels_option
def locate(image, concepts, model, pretrained, model_config, backend, device, image_size, out, as_json,
           save, heatmap_format, caption, max_pixels, **contrast):
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
        files = _save(res, out, prefix, image, save, heatmap_format, caption)
        if res.empty:
            click.echo(f"zsfinercam: hint: {_empty_hint(res)}", err=True)
        if as_json:
            record = {k: v for k, v in res.to_dict().items() if k != "token_map"}
            click.echo(json_bytes({**record, "files": files}).decode())
        else:
            click.echo(_summary(res, files))


def _save(res, out: Path, prefix: str, image: Path, kinds, heatmap_format: str, caption: bool) -> dict[str, str]:
    from ..files import refuse_overwriting_inputs, result_paths, safe_stem

    stem = f"{prefix}_{safe_stem(res.concept)}"
    refuse_overwriting_inputs(result_paths(out, stem, kinds, heatmap_format).values(), [image])
    return res.save(out, stem, files=kinds, heatmap_format=heatmap_format, caption=caption)


def _summary(res, files: dict[str, str]) -> str:
    """One line: the concept's logit and probability, its references and their logits, peak, box, files."""
    p = res.probability
    refs = ", ".join(res.references) or "-"
    ref_scores = f" (scores {', '.join(f'{res.scores[r]:.3f}' for r in res.references)})" if res.references else ""
    box = res.bbox()
    return (f"{res.concept}: score {res.scores[res.concept]:.3f}{f', p {p:.3f}' if p is not None else ''} "
            f"vs [{refs}]{ref_scores} peak {res.peak or '-'} bbox {box or '-'} -> {', '.join(files.values())}")


def _empty_hint(res) -> str:
    """Why a map has no peak, and what to change."""
    if not (res.token_map > 0).any():
        return (f"the map of {res.concept!r} is empty (its references outscore it everywhere); try fewer or "
                f"other references (--vs), --objective mean, or a lower --alpha")
    return f"the map of {res.concept!r} is flat (no place in the image stands out), so it has no peak or box"
