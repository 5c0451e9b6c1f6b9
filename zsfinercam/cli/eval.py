"""`zsfinercam eval`: localisation metrics against ground truth, Finer-CAM vs the CAM base alone."""
from __future__ import annotations

from pathlib import Path

import click

from ..options import BASES, EVAL_METHODS, FAITHFULNESS_NAMES, LocateOptions, OptionError
from .flags import (faithfulness_option, json_option, kernel_option, load_localizer, model_options, report_path,
                    run_options, zoom_options)


def _methods(ctx, param, value: str) -> tuple[str, ...]:
    names = tuple(v.strip() for v in value.split(",") if v.strip())
    bad = [n for n in names if n not in EVAL_METHODS]
    if bad or not names:
        raise click.BadParameter(f"choose from {', '.join(EVAL_METHODS)} (comma-separated), got {value!r}")
    return names


def _bases(ctx, param, value: str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    names = tuple(dict.fromkeys(v.strip() for v in value.split(",") if v.strip()))
    if not names:
        raise click.BadParameter(f"choose from {', '.join(BASES)} (comma-separated), got {value!r}")
    try:
        return tuple(LocateOptions(base=name).base for name in names)  # checked where every base is
    except OptionError as err:
        raise click.BadParameter(f"{err} (comma-separated)") from None


@click.command("eval")
@click.argument("manifest", required=False, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--synthetic", type=click.IntRange(min=1), default=None, metavar="N",
              help="Generate N synthetic birds (one-part references, part masks) instead of a manifest.")
@click.option("--split", type=click.Choice(["all", "train", "heldout"]), default="all", show_default=True,
              help="Synthetic classes to draw from (heldout: never seen in the toy model's training).")
@click.option("--seed", type=int, default=12345, show_default=True, help="Synthetic set seed.")
@click.option("--subject-scale", type=click.FloatRange(0, 1, min_open=True), default=1.0, show_default=True,
              metavar="S", help="With --synthetic: each bird on a cluttered canvas 1/S times its size (small subjects).")
@click.option("--methods", default=",".join(EVAL_METHODS), show_default=True, callback=_methods,
              help="finer (Finer-CAM), base (the CAM base alone); sanity baselines: random (map), "
                   "randomized (model weights).")
@click.option("--base", "bases", default=None, callback=_bases, metavar="BASE[,BASE...]",
              help=f"CAM bases to compare ({', '.join(BASES)}), one row each (method/base); "
                   "default: the default base, rows named by method.")
@click.option("--logit-scale", type=click.FloatRange(min=0, min_open=True), default=None, metavar="S",
              help="Score with this logit scale in the zero-shot head instead of the model's own (e.g. 100).")
@zoom_options
@click.option("--perturbation", is_flag=True, help="Also deletion/insertion AUC and RD@k (slower).")
@click.option("--top-percent", type=click.FloatRange(0, 100, min_open=True), default=5.0, show_default=True,
              help="k of RD@k: percent of pixels hidden.")
@faithfulness_option
@model_options
@json_option("the summary and every per-item row")
@click.option("--report", type=click.Path(dir_okay=False, path_type=Path), default=None, metavar="FILE",
              help="Also write the summary and every per-item row to FILE (JSON).")
@click.option("--write-manifest", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="With --synthetic: also save the generated set (PNGs + manifest.jsonl) here.")
@kernel_option
@run_options
def eval_command(manifest, synthetic, split, seed, subject_scale, methods, bases, logit_scale, zoom, zoom_on,
                 perturbation, top_percent, faithfulness, model, pretrained, model_config, backend, device, image_size,
                 as_json, report, write_manifest, kernel):
    """Score maps against masks/boxes from MANIFEST (JSONL), or on a synthetic set with --synthetic N."""
    from ..evaluation.evaluate import evaluate, read_manifest, synthetic_items, with_logit_scale, write_manifest as save_set
    from ..io.files import atomic_write, json_bytes, refuse_overwriting_inputs

    as_json, report = report_path(as_json, report)
    if (manifest is None) == (synthetic is None):
        raise click.UsageError("give either a MANIFEST or --synthetic N")
    if subject_scale != 1 and synthetic is None:
        raise click.UsageError("--subject-scale applies to --synthetic N only")
    items = read_manifest(manifest) if manifest is not None else None  # its mistakes before the model loads
    if report is not None:  # the report never replaces the ground truth it scores
        inputs = [manifest] if manifest is not None else []
        if write_manifest is not None:
            inputs.append(Path(write_manifest) / "manifest.jsonl")
        refuse_overwriting_inputs([report], inputs)
    loc = load_localizer(model, pretrained, model_config, backend, device, image_size, kernel=kernel)
    if logit_scale is not None:
        loc = with_logit_scale(loc, logit_scale)
    if items is None:
        items = synthetic_items(synthetic, seed, split, size=loc.config.image_size[0], subject_scale=subject_scale)
        if write_manifest is not None:
            click.echo(f"# synthetic set written to {save_set(items, write_manifest)}", err=True)
    result = evaluate(loc, items, methods, bases=bases, perturbation=perturbation, top_percent=top_percent,
                      zoom=zoom or zoom_on is not None, zoom_on=zoom_on,
                      faithfulness=FAITHFULNESS_NAMES[faithfulness])
    record = {"summary": result.summary(), "rows": result.rows}
    click.echo(json_bytes(record).decode() if as_json else result.table())
    if report is not None:
        report.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(report, lambda f: f.write(json_bytes(record, indent=1)))
