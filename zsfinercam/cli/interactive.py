"""`zsfinercam locate IMAGE --interactive`: the image encoded once, concepts and settings read from stdin.

A line is a concept (mapped against the current settings: its line printed, its files
written, as `locate` does), a setting `NAME: VALUE`, `reset`, `help`, or `quit`. Settings
are LocateOptions fields: `vs: a; b` (references separated by ';', empty to clear),
`alpha: 0.5`, `objective: mean`, `method: base`, `base: layercam`, `contrast: text`,
`vocab: cub200`, `templates: NAME`, `category: bird` (an empty value clears the last four).
A bad line prints the usual one-line error and the session goes on.
"""
from __future__ import annotations

import sys
from pathlib import Path

import click

from ..errors import UsageError, WorkError
from ..io.progress import note

TEXT_SETTINGS = ("vocab", "templates", "category", "contrast")  # an empty value clears them (None)
CHOICE_SETTINGS = ("objective", "method", "base")
SWITCHES = {"on": True, "off": False}  # zoom: on | off
SETTINGS = ("vs", "alpha", *CHOICE_SETTINGS, *TEXT_SETTINGS, "zoom", "zoom_on", "faithfulness")
QUIT = ("quit", "exit", "q")
HELP = ("one concept a line; settings as NAME: VALUE with NAME one of " + ", ".join(SETTINGS)
        + " (vs: a; b); reset; quit")


def session(loc, image: Path, options, writer, first=(), *, given_alpha: float | None = None, lines=None) -> None:
    """Encode `image` once, map `first` concepts, then every concept line of `lines` (default stdin).

    Args:
        options: the LocateOptions the session starts from (`reset` returns to them).
        writer: `locate.Writer`: saves each result and prints its line.
        given_alpha: the command line's --alpha, None when not given: then changing the objective
            or the method takes that objective's default alpha (and the base alone's 0 is never
            carried over to Finer-CAM).
    """
    feats = loc.encode_image(str(image))
    start, given = options, ({} if given_alpha is None else {"alpha": given_alpha})
    note(f"{image.name} encoded; {HELP}")
    for concept in first:
        _locate(loc, feats, concept, options, writer)
    for raw in sys.stdin if lines is None else lines:
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.lower() in QUIT:
            break
        try:
            if line.lower() == "reset":
                options, given = start, ({} if given_alpha is None else {"alpha": given_alpha})
                note("settings reset")
            elif line.lower() == "help":
                note(HELP)
            elif (setting := _setting(line)) is not None:
                options = _apply(options, *setting, given)
                note(f"settings: {_describe(options)}")
            else:
                _locate(loc, feats, line, options, writer)
        except (UsageError, WorkError, OSError) as err:
            click.echo(f"zsfinercam: error: {' '.join(str(err).split())}", err=True)


def _locate(loc, feats, concept: str, options, writer) -> None:
    for res in loc.locate_many(feats, [concept], options):
        writer.emit(res)


def _setting(line: str) -> tuple[str, str] | None:
    """(name, value) when `line` is `NAME: VALUE` with a known NAME; None for a concept."""
    name, sep, value = line.partition(":")
    name = name.strip().lower().replace("-", "_")
    return (name, value.strip()) if sep and name in SETTINGS else None


def _apply(options, name: str, value: str, given: dict[str, float]):
    """`options` with one setting changed, checked as the command line checks it (preflight)."""
    from ..concepts.vocab import preflight
    from ..options import FAITHFULNESS_NAMES, OptionError

    if name == "vs":
        change = {"vs": tuple(v.strip() for v in value.split(";") if v.strip()) or None}
    elif name == "alpha":
        try:
            change = {"alpha": float(value) if value else None}
        except ValueError:
            raise UsageError(f"alpha must be a number, got {value!r}") from None
    elif name == "zoom":
        if value not in SWITCHES:
            raise UsageError(f"zoom: on or off, got {value!r}")
        change = {"zoom": SWITCHES[value], **({} if SWITCHES[value] else {"zoom_on": None})}
    elif name == "zoom_on":  # a text turns zoom on; an empty one goes back to each concept's own window
        change = {"zoom_on": value or None, **({"zoom": True} if value else {})}
    elif name == "faithfulness":
        if value not in FAITHFULNESS_NAMES:
            raise UsageError(f"faithfulness: one of {', '.join(FAITHFULNESS_NAMES)}, got {value!r}")
        change = {"faithfulness": FAITHFULNESS_NAMES[value]}
    else:
        change = {name: value or None} if name in TEXT_SETTINGS else {name: value}
    if name in ("objective", "method"):  # the alpha the user gave, else the objective's default
        change["alpha"] = given.get("alpha")
    try:
        new = options.replace(**change)
        preflight(new)
    except OptionError as err:
        raise UsageError(f"{name}: {err}") from None
    if name == "alpha" and value:
        given["alpha"] = change["alpha"]
    elif name == "alpha":
        given.pop("alpha", None)
    return new


def _describe(options) -> str:
    data = options.to_json()
    shown = {k: data[k] for k in ("method", "objective", "alpha", "base", "vs", "contrast", "vocab", "templates",
                                  "category", "zoom_on") if k in data and data[k] is not None}
    shown.update({k: data[k] if data[k] is not True else "on" for k in ("zoom", "faithfulness") if data.get(k)})
    return ", ".join(f"{k} {'; '.join(v) if isinstance(v, list) else v}" for k, v in shown.items())
