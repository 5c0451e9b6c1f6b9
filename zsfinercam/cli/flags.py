"""Options shared by the verbs; choices come from the registries.

Imports neither torch nor numpy: a verb's --help and its usage errors answer at once.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import warnings
from pathlib import Path

import click

from ..backends import list_backends, token_gradients
from ..concepts.vocab import preflight
from ..errors import UsageError
from ..options import (BASES, DEFAULT_BASE, DEFAULT_MAX_PIXELS, FAITHFULNESS_NAMES, FALLBACK_BASE, METHODS,
                       OBJECTIVES, STRATEGIES, LocateOptions, OptionError)
from ..io.progress import LOGGER, note
from .defaults import choose_model

THREADS = "zsfinercam.threads"  # click context meta key: --threads, applied by load_localizer
MODEL_SOURCE = "zsfinercam.model_source"  # click context meta key: where the model came from (ModelChoice.source)


def model_options(func):
    """--model, --pretrained, --model-config, --backend, --device, --image-size. Without --model the
    model comes from $ZSFINERCAM_MODEL, the config file, or is the toy (`defaults.choose_model`); the
    command receives the chosen model, weights and backend."""
    options = [
        click.option("--model", "model", default=None, metavar="NAME",
                     show_default="$ZSFINERCAM_MODEL, else the config file's, else toy",
                     help="open_clip architecture (ViT-B-16), hf-hub:ORG/REPO, local-dir:PATH, or toy."),
        click.option("--pretrained", default=None, metavar="TAG|PATH",
                     help="Weights tag (e.g. openai) or a .safetensors/.pt/.bin file."),
        click.option("--model-config", type=click.Path(dir_okay=False), default=None, metavar="JSON",
                     help="open_clip model config for a custom architecture."),
        click.option("--backend", type=click.Choice(list_backends()), default=None, show_default="open_clip"),
        click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True),
        click.option("--image-size", type=click.IntRange(min=1), default=None, metavar="N",
                     help="Run the image tower at N x N (position embeddings resampled)."),
    ]

    @functools.wraps(func)
    def wrapper(*args, model, pretrained, backend, **kwargs):
        choice = choose_model(model, pretrained, backend)
        if choice.backend not in list_backends():
            raise UsageError(f"unknown backend {choice.backend!r} in {choice.source}; choose one of: "
                             f"{', '.join(list_backends())}")
        click.get_current_context().meta[MODEL_SOURCE] = choice.source
        return func(*args, model=choice.model, pretrained=choice.pretrained, backend=choice.backend, **kwargs)

    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper


max_pixels_option = click.option(
    "--max-pixels", type=click.IntRange(min=1), default=DEFAULT_MAX_PIXELS, show_default=True, metavar="N",
    help="Refuse image files with more pixels (width x height) than N, a guard against decompression "
         "bombs; raise it for huge images you trust.")


KERNELS = ("auto", "torch", "triton")  # core.kernel_choice.IMPLS, kept here so that --help imports no torch

kernel_option = click.option(
    "--kernel", type=click.Choice(KERNELS), default="auto", show_default=True,
    help="How maps are computed, for every --base: auto (Triton on CUDA where it imports, else torch), "
         "torch, or triton (CUDA; on CPU only in Triton's interpreter, TRITON_INTERPRET=1, for testing).")


def load_localizer(model, pretrained, model_config, backend, device, image_size, max_pixels=DEFAULT_MAX_PIXELS,
                   kernel="auto"):
    """Localizer.from_pretrained, announced on stderr, with --threads applied first; a --kernel that
    cannot run here is refused before the model loads."""
    import torch

    from ..core.kernel_choice import check_kernel
    from ..localizer import Localizer, resolve_device

    check_kernel(kernel, resolve_device(device))  # before the loading note and the load
    ctx = click.get_current_context(silent=True)
    threads = ctx.meta.get(THREADS) if ctx is not None else None
    if threads:
        torch.set_num_threads(threads)
    source = ctx.meta.get(MODEL_SOURCE, "default") if ctx is not None else "default"
    origin = "" if source in ("--model", "default") else f", named by {source}"
    note(f"loading {model} ({_weights(model, pretrained, backend)}{origin}) on {resolve_device(device)} ...")
    return Localizer.from_pretrained(model, pretrained, model_config=model_config, backend=backend,
                                     device=device, image_size=image_size, max_pixels=max_pixels, kernel=kernel)


def _weights(model: str, pretrained: str | None, backend: str) -> str:
    """What the loading note says about the weights."""
    if pretrained:
        return pretrained
    if model == "toy":
        return "embedded"
    if backend != "open_clip" or model.startswith(("hf-hub:", "local-dir:")):
        return "weights of the repo or folder"
    return "random weights"


class _Echo(logging.Handler):
    """Log records as `zsfinercam: message` lines on the current stderr (click's, so tests capture it)."""

    def emit(self, record: logging.LogRecord) -> None:
        click.echo(f"zsfinercam: {record.getMessage()}", err=True)


@contextlib.contextmanager
def saying(quiet: bool):
    """While a verb runs: notes and progress bars on stderr (zsfinercam.io.progress), or none with
    `quiet`; the logger is restored afterwards, so a caller of `main(argv)` keeps its own set-up."""
    handler, saved = _Echo(), (LOGGER.level, LOGGER.propagate)
    LOGGER.addHandler(handler)
    LOGGER.setLevel(logging.WARNING if quiet else logging.INFO)
    LOGGER.propagate = False
    try:
        yield
    finally:
        LOGGER.removeHandler(handler)
        LOGGER.setLevel(saved[0])
        LOGGER.propagate = saved[1]


def quiet_option(func):
    """--quiet/-q: no notes, hints or progress bars on stderr (warnings and errors still show)."""

    @click.option("--quiet", "-q", is_flag=True, help="No notes, hints or progress bars on stderr.")
    @functools.wraps(func)
    def wrapper(*args, quiet, **kwargs):
        with saying(quiet):
            return func(*args, **kwargs)

    return wrapper


def run_options(func):
    """--quiet and --threads N (torch's CPU threads, set before the model loads)."""

    @click.option("--threads", type=click.IntRange(min=1), default=None, metavar="N",
                  help="CPU threads for torch (torch.set_num_threads) [default: torch's].")
    @quiet_option
    @functools.wraps(func)
    def wrapper(*args, threads, **kwargs):
        click.get_current_context().meta[THREADS] = threads
        return func(*args, **kwargs)

    return wrapper


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
                     help="Contrast strength; 0 gives the CAM base alone."),
        click.option("--objective", type=click.Choice(OBJECTIVES), default="weighted", show_default=True),
        click.option("--base", type=click.Choice(BASES), default=None,
                     show_default=f"{DEFAULT_BASE}; {FALLBACK_BASE} on a backend without per-token gradients",
                     help="CAM base: gradcam (channel weights = mean gradient), hirescam (gradient x "
                          "activation per patch) or layercam (positive gradient x activation)."),
        click.option("--templates", default=None, metavar="NAME|FILE", help="Prompt template set or file."),
        faithfulness_option,
    ]
    for option in reversed(options):
        func = option(func)
    return func


def zoom_options(func):
    """--zoom and --zoom-on TEXT (which implies --zoom): map small subjects in a window around them."""
    options = [
        click.option("--zoom", is_flag=True,
                     help="Find the subject first and map a square window around it at the model's input size "
                          "(small subjects in large photos); results record the window."),
        click.option("--zoom-on", default=None, metavar="TEXT",
                     help="Find the zoom window by this text (e.g. bird) instead of each concept; implies --zoom."),
    ]
    for option in reversed(options):
        func = option(func)
    return func
faithfulness_option = click.option(
    "--faithfulness", type=click.Choice(list(FAITHFULNESS_NAMES)), is_flag=False, flag_value="both", default="off",
    show_default=True, help="Also score how much each map's objective rests on its top patch tokens (-1..1; "
                            "docs/faithfulness.md): --faithfulness alone or 'both' with deletion and insertion, "
                            "'deletion' with deletion alone (half the cost).")


method_option = click.option("--method", type=click.Choice(METHODS), default="finer", show_default=True,
                             help="finer = Finer-CAM; base = the CAM base (--base) alone, on the concept's logit.")


FLAGS = {"parts": "--part-vocab"}  # LocateOptions fields whose flag is not --<field>


def locate_options(vs, vocab, contrast, category, parts, part_vocab, alpha, objective, templates,
                   method: str = "finer", base: str | None = None, zoom: bool = False,
                   zoom_on: str | None = None, faithfulness: str = "off", *, backend: str) -> LocateOptions:
    """The LocateOptions of contrast_options' (and method_option's, zoom_options', faithfulness_option's)
    values, resolved for the --backend (`LocateOptions.resolved`) as `Localizer.options` will resolve them.

    Raises:
        click.BadParameter: a value LocateOptions refuses, named by its flag (exit status 2).
        UsageError: what `concepts.vocab.preflight` refuses (exit status 2).
    """
    if part_vocab != "cub_parts" and not parts:
        warnings.warn("--part-vocab is used only with --parts; ignored", stacklevel=2)
    try:
        options = LocateOptions(vs=vs, vocab=vocab, contrast=contrast, category=category,
                                parts=part_vocab if parts else None, alpha=alpha, method=method,
                                objective=objective, base=base, templates=templates,
                                zoom=zoom or zoom_on is not None, zoom_on=zoom_on,
                                faithfulness=FAITHFULNESS_NAMES[faithfulness])
        preflight(options)  # a misspelt --vocab or a conflict fails here, before the model loads
        return options.resolved(token_gradients(backend))
    except OptionError as err:
        raise click.BadParameter(str(err), param_hint=FLAGS.get(err.field, f"--{err.field.replace('_', '-')}")) \
            from None


def json_option(what: str):
    """--json: print `what` as JSON on stdout, as in every verb. The old `--json FILE` still
    works, with a warning (see `report_path`)."""
    return click.option("--json", "as_json", is_flag=False, flag_value="-", default=None, metavar="",
                        help=f"Print {what} as JSON on stdout (a file: --report FILE).")


def report_path(as_json: str | None, report):
    """(whether to print JSON, the --report file) from --json's value: `--json FILE`, the old
    form, is taken as `--report FILE` with a deprecation warning."""
    if as_json in (None, "-"):
        return as_json == "-", report
    if report is not None:
        raise click.UsageError(f"--json {as_json} (the old form of --report) and --report {report} both "
                               "name a file; give --report only")
    warnings.warn(f"--json FILE is now --report FILE (--json alone prints JSON on stdout); "
                  f"writing {as_json} as --report", FutureWarning, stacklevel=2)
    return False, Path(as_json)
