"""Concept vocabularies and prompt templates: shipped files and user files.

A *vocabulary* is an ordered list of concept names (the classes of a dataset, or any
list of phrases); a *part vocabulary* groups its phrases under part names (``bill``,
``wing`` ...); a *template set* is a list of format strings such as
``"a photo of a {}."`` that each concept is put through before text encoding.

Shipped files live in the ``zsfinercam.prompts`` package (the ``prompts/`` folder of the
source tree) and are read with :mod:`importlib.resources`, so they are found the same
way from a wheel, an editable install or a checkout. Anywhere a shipped name is
accepted, a path to a user file works too: ``load_vocab("cub200")`` and
``load_vocab("/data/my_birds.txt")``. A shipped name wins over a same-named file in the
working directory; write ``./cub200`` to mean the file.

File format
-----------
``.txt`` (UTF-8; a byte-order mark is ignored):
    one entry per line; surrounding whitespace is stripped; blank lines and lines
    whose first non-blank character is ``#`` are ignored. In a part vocabulary a line
    of the form ``[part name]`` starts the section of that part; every entry must then
    follow some header, and a part named twice collects both sections.
``.json``:
    either a list of strings, or an object with exactly one of the keys
    ``"classes"`` (list of strings), ``"templates"`` (list of strings) or
    ``"parts"`` (object: part name -> list of strings). Other keys (``"description"``,
    ``"source"``, ...) are metadata and are not read as entries.
Category (optional): a comment line ``# category: bird`` or the JSON key
    ``"category"`` says what the entries are kinds of, for ``contrast="generic"``.

Rules applied to every file:
    * Entries keep their order. A repeated entry keeps its first occurrence and the
      later ones are dropped with a :class:`UserWarning` naming them (a repeated concept
      would only split its own probability mass in the Finer-CAM softmax).
    * Entries are never truncated or case-folded; unicode is kept as written. (The CLIP
      tokenizer truncates at 77 tokens; that is the text encoder's business.)
    * A template must contain exactly one ``{}`` and no other brace; otherwise
      :class:`ValueError` names the file and line.
    * A file with no entries, an unknown name, a missing path or an unsupported suffix
      raises :class:`ValueError` that lists the shipped names.

Bad input raises :class:`zsfinercam.errors.UsageError`, a :class:`ValueError` subclass
(the CLI reports it as a usage error); a wrong argument type raises :class:`TypeError`.

Shipped template sets are the files ``templates_<name>.txt``; every other ``.txt`` or
``.json`` file in the package is a vocabulary named after its stem.
"""

from __future__ import annotations

import fnmatch
import functools
import json
import os
import re
import warnings
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Optional, Union

from ..errors import UsageError
from ..options import LocateOptions, check_concepts, choose_strategy

__all__ = [
    "DEFAULT_TEMPLATES",
    "list_vocabs",
    "list_templates",
    "load_vocab",
    "load_parts",
    "load_templates",
    "load_category",
    "vocab_info",
]

# "short" (7 photo-style templates taken from CLIP's 80) rather than "openai_imagenet":
# averaging a few templates already removes most of the single-prompt wording noise,
# while the text tower then runs 7 times per concept instead of 80. Once an image's trunk
# (or Jacobian) is cached, text encoding is what a new set of prompts costs, so the
# default keeps it ~11x cheaper. The 80 are there for accuracy-first runs.
DEFAULT_TEMPLATES = "short"

PathLike = Union[str, os.PathLike]

_PACKAGE = "zsfinercam.prompts"
_TEMPLATE_PREFIX = "templates_"
_SUFFIXES = (".txt", ".json")
_CONTENT_KEYS = ("classes", "templates", "parts")
_HEADER = re.compile(r"^\[(.*)\]$")
_PLACEHOLDER = "{}"
_CATEGORY = re.compile(r"^#\s*category:\s*(.+)$", re.IGNORECASE)


@dataclass(frozen=True)
class _Doc:
    """One parsed file. ``parts`` is None for flat files."""

    label: str  # shown in messages: shipped name or file path
    kind: str  # JSON key "classes" / "parts" / "templates"; "list" or "text" if unmarked
    entries: tuple[tuple[str, str], ...]  # (where, entry), where = "line 3" / "entry 3"
    parts: Optional[tuple[tuple[str, tuple[tuple[str, str], ...]], ...]]
    description: str
    category: str = ""  # what the entries are kinds of ("bird"), for contrast="generic"


# ----------------------------------------------------------------------------- discovery
@functools.lru_cache(maxsize=1)
def _shipped() -> dict[str, dict[str, str]]:
    """Shipped files by kind: {"vocab": {name: filename}, "templates": {...}}."""
    found: dict[str, dict[str, str]] = {"vocab": {}, "templates": {}}
    for item in resources.files(_PACKAGE).iterdir():
        stem, suffix = os.path.splitext(item.name)
        if suffix not in _SUFFIXES or not item.is_file():
            continue
        if stem.startswith(_TEMPLATE_PREFIX):
            kind, stem = "templates", stem[len(_TEMPLATE_PREFIX):]
        else:
            kind = "vocab"
        if stem in found[kind]:
            raise RuntimeError(f"two shipped files define {kind} {stem!r}")
        found[kind][stem] = item.name
    return found


def list_vocabs(pattern: Optional[str] = None) -> list[str]:
    """Names of the shipped vocabularies (class lists and part vocabularies), sorted.

    Args:
        pattern: optional shell-style wildcard filter, e.g. ``"cub*"``.
    """
    return _filter(_shipped()["vocab"], pattern)


def list_templates(pattern: Optional[str] = None) -> list[str]:
    """Names of the shipped template sets, sorted (``pattern`` as in :func:`list_vocabs`)."""
    return _filter(_shipped()["templates"], pattern)


def _filter(names, pattern: Optional[str]) -> list[str]:
    names = sorted(names)
    return names if pattern is None else [n for n in names if fnmatch.fnmatchcase(n, pattern)]


# ----------------------------------------------------------------------------- public API
def load_vocab(name_or_path: PathLike) -> list[str]:
    """Concept names of a shipped vocabulary or a user file, in file order.

    A part vocabulary is flattened part by part (a phrase listed under two parts is
    kept once, at its first place).

    Raises:
        ValueError: unknown name / missing file, a template file, a malformed file.
        TypeError: ``name_or_path`` is neither a string nor a path.
    """
    doc = _load("vocab", name_or_path)
    if doc.kind == "templates":
        raise UsageError(f"{doc.label} holds templates, not concepts; "
                         f"use load_templates({str(name_or_path)!r})")
    return _dedupe(doc.label, doc.entries)


def load_parts(name_or_path: PathLike) -> dict[str, list[str]]:
    """A part vocabulary as ``{part: [phrases]}`` (parts and phrases in file order).

    Raises:
        ValueError: as :func:`load_vocab`, or the file has no parts (a flat list).
    """
    doc = _load("vocab", name_or_path)
    if doc.parts is None:
        with_parts = [n for n in list_vocabs() if _load_shipped("vocab", n).parts]
        raise UsageError(f"{doc.label} is a flat list, not a part vocabulary "
                         f"(no [part] headers / 'parts' key); shipped part "
                         f"vocabularies: {', '.join(with_parts) or 'none'}")
    return {part: _dedupe(f"{doc.label} [{part}]", items) for part, items in doc.parts}


def load_templates(name_or_path: PathLike = DEFAULT_TEMPLATES) -> list[str]:
    """Prompt templates of a shipped set or a user file; each has exactly one ``{}``.

    Raises:
        ValueError: unknown name / missing file, a concept or part file, a template
            without exactly one ``{}`` (the message names its line), no templates.
    """
    doc = _load("templates", name_or_path)
    if doc.kind in ("classes", "parts") or doc.parts is not None:
        raise UsageError(f"{doc.label} holds concepts, not templates; "
                         f"use load_vocab({str(name_or_path)!r})")
    for where, template in doc.entries:
        check_template(template, f"{doc.label}, {where}: ")
    return _dedupe(doc.label, doc.entries)


def load_category(name_or_path: PathLike) -> Optional[str]:
    """What a vocabulary's entries are kinds of ("bird" for ``cub200``), or None.

    Text files name it in a comment line ``# category: bird``; JSON files under the
    key ``"category"``. Used by ``contrast="generic"`` when no category is given.
    """
    return _load("vocab", name_or_path).category.strip() or None


def check_template(template: object, where: str = "") -> str:
    """`template` itself if it is a string with exactly one ``{}`` and no other brace."""
    rest = template.replace(_PLACEHOLDER, "", 1) if isinstance(template, str) else None
    if rest is None or _PLACEHOLDER not in template or "{" in rest or "}" in rest:
        raise UsageError(f"{where}template {template!r} must contain exactly one {_PLACEHOLDER} "
                         "and no other braces")
    return template


def vocab_info() -> list[dict]:
    """One record per shipped file, vocabularies first, for listings such as a CLI.

    Each record has ``name``, ``kind`` (``"classes"``, ``"parts"`` or
    ``"templates"``), ``size`` (number of distinct entries; for part vocabularies the
    flattened phrases), ``parts`` (number of parts, 0 for flat lists) and
    ``description`` (the file's first comment line or its ``"description"`` key).
    """
    records = []
    for kind in ("vocab", "templates"):
        for name in sorted(_shipped()[kind]):
            doc = _load_shipped(kind, name)
            flat_kind = "templates" if kind == "templates" else "classes"
            entries = load_templates(name) if kind == "templates" else load_vocab(name)
            records.append({
                "name": name,
                "kind": "parts" if doc.parts else flat_kind,
                "size": len(entries),
                "parts": len(doc.parts or ()),
                "description": doc.description,
            })
    return records


# ----------------------------------------------------------------------------- resolution
def _load(kind: str, name_or_path: PathLike) -> _Doc:
    """Resolve a shipped name or a file path and return its parsed (cached) document."""
    if isinstance(name_or_path, str):
        if name_or_path in _shipped()[kind]:
            return _load_shipped(kind, name_or_path)
        path = Path(name_or_path).expanduser()
    elif isinstance(name_or_path, os.PathLike):
        path = Path(name_or_path)
    else:
        raise TypeError(f"expected a shipped name or a file path, got "
                        f"{type(name_or_path).__name__}")
    if not path.is_file():
        raise UsageError(_unknown_message(kind, str(name_or_path), path))
    if path.suffix.lower() not in _SUFFIXES:
        raise UsageError(f"unsupported file type {path.suffix!r} for {path}; "
                         f"use one of {', '.join(_SUFFIXES)}")
    stat = path.stat()
    return _load_file(str(path.resolve()), stat.st_mtime_ns, stat.st_size)


def _unknown_message(kind: str, name: str, path: Path) -> str:
    what, plural = (("template set", "template sets") if kind == "templates"
                    else ("vocabulary", "vocabularies"))
    names = list_templates() if kind == "templates" else list_vocabs()
    msg = (f"unknown {what} {name!r}: not a shipped name and no file at {path}. "
           f"Shipped {plural}: {', '.join(names)}; or pass a path to a "
           f"{' / '.join(_SUFFIXES)} file.")
    other = "vocab" if kind == "templates" else "templates"
    if name in _shipped()[other]:
        other_what, loader = {"vocab": ("vocabulary", "load_vocab"),
                              "templates": ("template set", "load_templates")}[other]
        msg += f" ({name!r} is a shipped {other_what}: use {loader}.)"
    return msg


@functools.lru_cache(maxsize=None)
def _load_shipped(kind: str, name: str) -> _Doc:
    filename = _shipped()[kind][name]
    text = resources.files(_PACKAGE).joinpath(filename).read_text(encoding="utf-8-sig")
    return _parse(text, name, filename.endswith(".json"))


@functools.lru_cache(maxsize=64)
def _load_file(path: str, mtime_ns: int, size: int) -> _Doc:
    """Parse a user file; the key includes mtime and size so edits are picked up."""
    del mtime_ns, size  # part of the cache key only
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise UsageError(f"{path}: not UTF-8 text (bad byte at offset {err.start}); "
                         f"save the file as UTF-8") from None
    return _parse(text, path, path.lower().endswith(".json"))


# ----------------------------------------------------------------------------- parsing
def _parse(text: str, label: str, is_json: bool) -> _Doc:
    doc = _parse_json(text, label) if is_json else _parse_text(text, label)
    if not doc.entries:
        raise UsageError(f"{label} has no entries")
    return doc


def _parse_text(text: str, label: str) -> _Doc:
    entries: list[tuple[str, str]] = []
    parts: dict[str, list[tuple[str, str]]] = {}
    description, category, current = "", "", None
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if line.startswith("#"):
            if found := _CATEGORY.match(line):
                category = category or found.group(1).strip()
            else:
                description = description or line.lstrip("#").strip()
            continue
        if not line:
            continue
        header = _HEADER.match(line)
        if header:
            current = header.group(1).strip()
            if not current:
                raise UsageError(f"{label}, line {lineno}: empty part name '[]'")
            if entries and not parts:
                raise UsageError(f"{label}, {entries[0][0]}: entry before the first "
                                 f"[part] header (line {lineno})")
            parts.setdefault(current, [])
            continue
        item = (f"line {lineno}", line)
        entries.append(item)
        if current is not None:
            parts[current].append(item)
    frozen_parts = tuple((p, tuple(v)) for p, v in parts.items()) if parts else None
    return _Doc(label, "text", tuple(entries), frozen_parts, description, category)


def _parse_json(text: str, label: str) -> _Doc:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise UsageError(f"{label}: invalid JSON at line {err.lineno}, column "
                         f"{err.colno}: {err.msg}") from None
    if isinstance(data, list):  # a bare list may hold concepts or templates
        return _Doc(label, "list", _strings(data, label), None, "")
    if not isinstance(data, dict):
        raise UsageError(f"{label}: expected a JSON list or object, got {type(data).__name__}")
    keys = [k for k in _CONTENT_KEYS if k in data]
    if len(keys) != 1:
        raise UsageError(f"{label}: a JSON object needs exactly one of the keys "
                         f"{', '.join(repr(k) for k in _CONTENT_KEYS)}; found "
                         f"{', '.join(repr(k) for k in keys) or 'none'}")
    kind, description, category = keys[0], str(data.get("description", "")), str(data.get("category", ""))
    if kind != "parts":
        return _Doc(label, kind, _strings(data[kind], f"{label} {kind!r}"), None, description, category)
    groups = data["parts"]
    if not isinstance(groups, dict) or not groups:
        raise UsageError(f"{label}: 'parts' must be a non-empty object "
                         f"(part name -> list of strings)")
    parts = tuple((str(part), _strings(items, f"{label} part {part!r}"))
                  for part, items in groups.items())
    entries = tuple(item for _, items in parts for item in items)
    return _Doc(label, kind, entries, parts, description, category)


def _strings(items, label: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(items, list):
        raise UsageError(f"{label}: expected a list of strings, got {type(items).__name__}")
    out = []
    for index, item in enumerate(items, start=1):
        if not isinstance(item, str) or not item.strip():
            raise UsageError(f"{label}, entry {index}: expected a non-empty string, "
                             f"got {item!r}")
        out.append((f"entry {index}", item.strip()))
    return tuple(out)


def _dedupe(label: str, entries) -> list[str]:
    """Entries in order, first occurrence kept; warn once naming the dropped repeats."""
    seen: set[str] = set()
    kept, dropped = [], []
    for where, entry in entries:
        if entry in seen:
            dropped.append(f"{entry!r} ({where})")
        else:
            seen.add(entry)
            kept.append(entry)
    if dropped:
        shown = ", ".join(dropped[:5])
        if len(dropped) > 5:
            shown += f" and {len(dropped) - 5} more"
        noun = "entry" if len(dropped) == 1 else "entries"
        warnings.warn(f"{label}: dropped {len(dropped)} repeated {noun} "
                      f"(first occurrence kept): {shown}", UserWarning, stacklevel=3)
    return kept


def preflight(options: LocateOptions) -> None:
    """Check now what would otherwise fail only when maps are made, after the model loads:
    the reference strategy's consistency (e.g. vs with contrast "text") and that the
    vocabulary, templates and part vocabulary given by name or file exist and parse.

    Reads those files (this module; imports neither torch nor numpy). Raises UsageError.
    """
    strategy = choose_strategy(options.contrast, options.vs, options.parts, options.alpha == 0)
    if isinstance(options.vocab, str):
        load_vocab(options.vocab)
    if strategy == "generic" and options.category is None and (
            not isinstance(options.vocab, str) or load_category(options.vocab) is None):
        raise UsageError("contrast 'generic' needs the concepts' category: category='bird' (--category bird)")
    if isinstance(options.templates, str):
        load_templates(options.templates)
    elif options.templates is not None:
        for template in options.templates:
            check_template(template)
    if isinstance(options.parts, str) and options.alpha != 0:
        load_parts(options.parts)
    if options.vs is not None:
        check_concepts(list(options.vs))
    if options.category is not None:
        check_concepts([options.category])
