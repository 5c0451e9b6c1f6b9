"""`zsfinercam locate IMAGE CONCEPT...`: maps for concepts in one image (or, with --interactive, from stdin)."""
from __future__ import annotations

from pathlib import Path

import click

from ..errors import UsageError
from ..io.files import HEATMAP_FORMATS, SAVE_KINDS, check_save_kinds
from ..io.progress import note
from .flags import (contrast_options, kernel_option, load_localizer, locate_options, max_pixels_option,
                    method_option, model_options, run_options, zoom_options)


def _save_kinds(ctx, param, value: str) -> tuple[str, ...]:
    """--save's comma list, checked (`files.check_save_kinds`) before anything loads."""
    try:
        return check_save_kinds(k.strip() for k in value.split(",") if k.strip())
    except ValueError as err:
        raise click.BadParameter(f"{err} (a comma list)") from None


@click.command()
@click.argument("image", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("concepts", nargs=-1)
@contrast_options
@zoom_options
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
@click.option("--interactive", "-i", is_flag=True,
              help="Encode IMAGE once, then map each concept read from stdin (one a line; settings lines such "
                   "as 'vs: a; b', 'alpha: 0.5', 'reset'; 'quit' or end of input stops).")
@max_pixels_option
@kernel_option
@run_options
def locate(image, concepts, model, pretrained, model_config, backend, device, image_size, out, as_json,
           save, heatmap_format, caption, interactive, max_pixels, kernel, **contrast):
    """Show where IMAGE holds the evidence for each CONCEPT, against similar concepts.

    Each concept's files are named after the image, the concept and the settings (with a
    hash of them and of the references), so other settings never overwrite them and a rerun
    rewrites its own: the names batch, compare and the lab give too.

    Examples:

      zsfinercam locate examples/bird.png "red-tailed hawk" --vs "red-shouldered hawk"

      zsfinercam locate examples/bird.png "red-tailed hawk" --vocab cub200 --contrast text

      zsfinercam locate examples/bird.png "red tail" --parts

      zsfinercam locate examples/bird.png --interactive

    A concept given twice is mapped once (with a warning).
    """
    from ..options import unique_concepts

    options = locate_options(**contrast, backend=backend)
    if not concepts and not interactive:
        raise UsageError("no concepts given; pass at least one after IMAGE, e.g. \"red-tailed hawk\", "
                         "or --interactive to type them")
    names = unique_concepts(concepts) if concepts else []
    writer = Writer(image, out, save, heatmap_format, caption, as_json)
    writer.check(names, options)
    loc = load_localizer(model, pretrained, model_config, backend, device, image_size, max_pixels, kernel)
    if interactive:
        from .interactive import session

        session(loc, image, options, writer, names, given_alpha=contrast["alpha"])
        return
    for res in loc.locate_many(str(image), names, options):
        writer.emit(res)


class Writer:
    """Saves one result's files and prints its line (or JSON), for `locate` and `--interactive`."""

    def __init__(self, image: Path, out: Path, kinds, heatmap_format: str, caption: bool, as_json: bool):
        self.image, self.out, self.kinds = image, out, kinds
        self.heatmap_format, self.caption, self.as_json = heatmap_format, caption, as_json

    def check(self, concepts, options) -> None:
        """Refuse, before anything loads, an --out whose files would overwrite the image: the
        image lies in --out with a name the results of `concepts` under the resolved `options`
        can have (`files.result_name_pattern`: every name but the references' hash is known)."""
        from ..io.files import image_stem, result_name_pattern

        if self.out.exists() and not self.out.is_dir():
            raise UsageError(f"--out {self.out} is a file; give a folder")
        if self.image.resolve().parent != self.out.resolve():
            return
        for concept in concepts:
            if result_name_pattern(image_stem(self.image), concept, options.to_json()).fullmatch(self.image.name):
                raise UsageError(f"an output would overwrite the input {self.image.resolve()}; choose another --out")

    def emit(self, res) -> dict[str, str]:
        """Write `res`'s files (named by the one rule, `LocateResult.default_stem`), print its line;
        returns the paths."""
        from ..io.files import json_bytes, refuse_overwriting_inputs, result_paths

        stem = res.default_stem()
        refuse_overwriting_inputs(result_paths(self.out, stem, self.kinds, self.heatmap_format).values(), [self.image])
        files = res.save(self.out, stem, files=self.kinds, heatmap_format=self.heatmap_format, caption=self.caption)
        if res.empty:
            note(f"hint: {_empty_hint(res)}")
        if res.zoom and res.window is None:
            note(f"zoom: no window scored above the whole image for {res.zoom_on or res.concept!r} "
                 "(the subject fills it, or none was found); mapped the whole image")
        if self.as_json:
            record = {k: v for k, v in res.to_dict().items() if k != "token_map"}
            click.echo(json_bytes({**record, "files": files}).decode())
        else:
            click.echo(result_line(res, files))
        return files


def result_line(res, files: dict[str, str]) -> str:
    """One line: the concept's logit and probability, its references and their logits, peak, box, the
    zoom window (with zoom), files."""
    p = res.probability
    refs = ", ".join(res.references) or "-"
    ref_scores = f" (scores {', '.join(f'{res.scores[r]:.3f}' for r in res.references)})" if res.references else ""
    box = res.bbox()
    window = f" window {res.window or '-'}" if res.zoom else ""
    faith = f" faithfulness {res.faithfulness_text}" if res.faithfulness is not None else ""
    return (f"{res.concept}: score {res.scores[res.concept]:.3f}{f', p {p:.3f}' if p is not None else ''} "
            f"vs [{refs}]{ref_scores} peak {res.peak or '-'} bbox {box or '-'}{window}{faith} "
            f"-> {', '.join(files.values())}")


def _empty_hint(res) -> str:
    """Why a map has no peak, and what to change."""
    if not (res.token_map > 0).any():
        return (f"the map of {res.concept!r} is empty (its references outscore it everywhere); try fewer or "
                f"other references (--vs), --objective mean, or a lower --alpha")
    return f"the map of {res.concept!r} is flat (no place in the image stands out), so it has no peak or box"
