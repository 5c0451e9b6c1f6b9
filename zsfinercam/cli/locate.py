"""`zsfinercam locate IMAGE CONCEPT...`: maps for concepts in one image."""
from __future__ import annotations

import json
import re
from pathlib import Path

import click

from ..objectives import OBJECTIVES
from .options import load_localizer, model_options

METHODS = ("finer", "gradcam")


@click.command()
@click.argument("image", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("concepts", nargs=-1, required=True)
@click.option("--vs", multiple=True, metavar="TEXT", help="A reference concept to contrast with (repeatable).")
@click.option("--vocab", default=None, metavar="NAME|FILE",
              help="Vocabulary to pick references from (see prompts/), or a text/JSON file.")
@click.option("--alpha", type=float, default=None, show_default="1.0; 0.6 for --objective mean",
              help="Contrast strength; 0 gives plain Grad-CAM.")
@click.option("--method", type=click.Choice(METHODS), default="finer", show_default=True)
@click.option("--objective", type=click.Choice(OBJECTIVES), default="weighted", show_default=True)
@click.option("--templates", default=None, metavar="NAME|FILE", help="Prompt template set or file.")
@model_options
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("zsfinercam_out"),
              show_default=True, help="Folder for overlays, heatmaps (.npy) and JSON.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per concept on stdout.")
def locate(image, concepts, vs, vocab, alpha, method, objective, templates, model, pretrained, model_config,
           backend, device, image_size, out, as_json):
    """Show where IMAGE holds the evidence for each CONCEPT, against similar concepts.

    Example: zsfinercam locate bird.jpg "red-tailed hawk" --vs "red-shouldered hawk"
    """
    if alpha is not None and not (alpha >= 0 and alpha != float("inf")):
        raise click.BadParameter(f"must be a finite number >= 0, got {alpha}", param_hint="--alpha")
    loc = load_localizer(model, pretrained, model_config, backend, device, image_size)
    results = loc.locate_many(str(image), list(concepts), vs=list(vs) or None, vocab=vocab, alpha=alpha,
                              method=method, objective=objective, templates=templates)
    image_stem = re.sub(r"[^\w.-]+", "-", image.stem)[:40] or "image"
    for res in results:
        files = _save(res, out, image_stem, image)
        if as_json:
            record = {k: v for k, v in res.to_dict().items() if k != "token_map"}
            click.echo(json.dumps({**record, "files": files}, ensure_ascii=False))
        else:
            click.echo(_summary(res, files))


def _save(res, out: Path, image_stem: str, image: Path) -> dict[str, str]:
    from ..result import safe_stem

    stem = f"{image_stem}_{safe_stem(res.concept)}"
    planned = [out / f"{stem}{suffix}" for suffix in ("_overlay.png", "_heatmap.npy", ".json")]
    if any(p.resolve() == image.resolve() for p in planned):
        raise click.UsageError(f"an output would overwrite the input {image}; choose another --out")
    return res.save(out, stem)


def _summary(res, files: dict[str, str]) -> str:
    refs = ", ".join(res.references) or "-"
    box = res.bbox()
    return (f"{res.concept}: score {res.scores[res.concept]:.3f} vs [{refs}] peak {res.peak} "
            f"bbox {box if box else '-'} -> {files['overlay']}")
