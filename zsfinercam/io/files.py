"""Output files: atomic writes, JSON bytes, file-name stems, and the guard against overwriting an input.

Every file zsfinercam writes (results, the compare grid, batch manifests and settings, the text
cache, `eval --json`) goes through `atomic_write`, so a reader sees the old file or the new one,
never a part, and the new file gets the permissions a plain `open(path, "w")` would give it.
Imports only the standard library.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import stat
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Mapping

from ..errors import UsageError

TMP_PREFIX = ".tmp-"  # names of atomic_write's temporary files (a killed run may leave some)
RESULT_SUFFIXES = {"overlay": "_overlay.png", "heatmap": "_heatmap.npy", "json": ".json"}  # one result's files
SAVE_KINDS = tuple(RESULT_SUFFIXES)  # the files `LocateResult.save` can write
HEATMAP_FORMATS = ("npy", "npy16", "png16")  # float32 .npy, float16 .npy, 16-bit PNG
IMAGE_STEM_LEN = 40  # readable part of an image's stem
MANIFEST_NAME = "manifest.jsonl"  # a batch run's record per image, in its --out folder
SAFE_STEM = r"(?:[\w-]+-)?[0-9a-f]{8}"  # what `safe_stem` makes: slug-digest, or the digest alone
RESULT_FILE = re.compile(  # the name of any file `result_stem` names: image, concept, label-digest, suffix
    SAFE_STEM + "_" + SAFE_STEM + r"_[\w.+-]+-[0-9a-f]{8}(?:_overlay\.png|_heatmap\.npy|_heatmap\.png|\.json)")


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> None:
    """`write(file)` into a temporary file next to `path` (named TMP_PREFIX...), then rename it over `path`.

    Readers see the old file or the new one, never a part. The file is created with mode 0o666
    less the process umask (as `open(path, "w")` creates it: 0o644 under umask 022, 0o600 under
    077); a file it replaces keeps its own mode, as `open(path, "w")` would keep it.
    """
    path = Path(path)
    while True:
        tmp = path.parent / f"{TMP_PREFIX}{secrets.token_hex(6)}{path.suffix}"
        try:  # the kernel applies the umask (and any default ACL) to 0o666, as for open(path, "w")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
            break
        except FileExistsError:  # pragma: no cover - 48 random bits
            continue
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        try:
            os.chmod(tmp, stat.S_IMODE(os.stat(path).st_mode))
        except FileNotFoundError:
            pass  # a new file: the mode the umask gave it stays
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def json_bytes(obj, **kwargs) -> bytes:
    """`obj` as UTF-8 JSON, unicode kept readable.

    When a str holds lone surrogates (a file name that is not UTF-8), everything non-ASCII is
    escaped instead (\\udce9), so the file is still valid UTF-8 and `json.loads` gives back the
    very same str (and path). `kwargs` go to `json.dumps`.
    """
    try:
        return json.dumps(obj, ensure_ascii=False, **kwargs).encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(obj, ensure_ascii=True, **kwargs).encode("ascii")


def safe_stem(text: str, max_len: int = 48, key: str | None = None) -> str:
    """A file-name stem for any text: `<slug>-<8 hex digits>`, or the digits alone.

    The slug keeps letters and digits (unicode too), lower-cased, with every other run of
    characters made one '-', and is cut to `max_len`; so a stem never holds a path separator,
    '.', NUL or a leading '-'. The digits are a hash of the full text, so different texts get
    different stems. `key`, when given, is hashed instead of `text` (e.g. a file's full path,
    so that a.jpg in two folders gets two stems).
    """
    slug = re.sub(r"[^\w]+", "-", text.strip().lower(), flags=re.UNICODE).strip("-_")[:max_len].strip("-_")
    digest = hashlib.sha1(_utf8(text if key is None else key)).hexdigest()[:8]
    return f"{slug}-{digest}" if slug else digest


def image_stem(path: str | os.PathLike) -> str:
    """The stem of an image's output files: its name (slugged, cut to IMAGE_STEM_LEN) and a hash
    of its resolved path, so bird.png in two folders never shares a name."""
    path = Path(path)
    return safe_stem(path.stem, IMAGE_STEM_LEN, key=str(path.resolve()))


def source_stem(source: str) -> str:
    """`image_stem` of an image file; for any other label ("array", "image"), its `safe_stem`."""
    return image_stem(source) if os.path.isfile(source) else safe_stem(source, IMAGE_STEM_LEN)


def result_stem(prefix: str, concept: str, settings: Mapping[str, Any], references: Iterable[str]) -> str:
    """The one naming rule for result files (locate, compare, batch, the lab, `LocateResult.save`):
    `<prefix>_<concept>_<label>-<hash>`.

    <prefix> is the image's stem (`source_stem`); <concept> is `safe_stem(concept)`; <label>
    (`settings_label`) names the method and base, and for Finer-CAM the objective and alpha;
    <hash> is 8 hex digits of a hash of every setting (`LocateResult.settings()`: method,
    objective, alpha, base, templates, contrast) and of the references. E.g.
    `bird-1a2b3c4d_red-tail-5e6f7a8b_finer-weighted-a1-hirescam-0c1d2e3f`, or
    `bird-1a2b3c4d_red-tail-5e6f7a8b_hirescam-9a8b7c6d` for the base alone. So maps made with
    other settings get other names, and the same map gets the same name in every run, engine
    and surface.
    """
    key = json.dumps({"settings": dict(settings), "references": list(references)}, sort_keys=True,
                     ensure_ascii=False)
    digest = hashlib.sha1(_utf8(key)).hexdigest()[:8]
    return f"{prefix}_{safe_stem(concept)}_{settings_label(settings)}-{digest}"


def settings_label(settings: Mapping[str, Any]) -> str:
    """The readable part of `result_stem`'s settings: `<base>` for the base alone (method "base"),
    `finer-<objective>-a<alpha>-<base>` for Finer-CAM (the settings must be resolved); "-zoom"
    follows when the map was asked for with zoom."""
    if settings["method"] == "base":
        label = str(settings["base"])
    else:
        label = f"finer-{settings['objective']}-a{float(settings['alpha']):g}-{settings['base']}"
    return label + ("-zoom" if settings.get("zoom") else "")


def result_name_pattern(prefix: str, concept: str, settings: Mapping[str, Any]) -> re.Pattern:
    """Every file name `result_stem` can give with these settings, whatever the references (which
    are known only once the model has run): for checks made before the model loads."""
    stem = re.escape(f"{prefix}_{safe_stem(concept)}_{settings_label(settings)}-") + "[0-9a-f]{8}"
    suffixes = "|".join(re.escape(s) for s in {*RESULT_SUFFIXES.values(), "_heatmap.png"})
    return re.compile(f"{stem}(?:{suffixes})")


def check_save_kinds(kinds: Iterable[str]) -> tuple[str, ...]:
    """The kinds of file to write (some of SAVE_KINDS), validated, in SAVE_KINDS order.

    Raises:
        ValueError: an unknown kind, or none.
    """
    kinds = list(kinds)
    unknown = [k for k in kinds if k not in SAVE_KINDS]
    if unknown or not kinds:
        raise ValueError(f"expected some of {', '.join(SAVE_KINDS)} to save, got {', '.join(kinds) or 'nothing'}")
    return tuple(k for k in SAVE_KINDS if k in kinds)


def check_out_dir(out: str | os.PathLike, resume: bool) -> None:
    """Refuse to start a batch run over one already in `out` unless resuming (nothing is ever overwritten)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; give a folder")
    manifest = out / MANIFEST_NAME
    if not resume and manifest.is_file() and manifest.stat().st_size > 0:
        raise UsageError(f"{out} already holds a run ({MANIFEST_NAME}); pass --resume to continue it "
                         f"or choose another --out")


def result_paths(directory: str | os.PathLike, stem: str, kinds: Iterable[str] = SAVE_KINDS,
                 heatmap_format: str = "npy") -> dict[str, Path]:
    """Where one result's files go: {"overlay": <stem>_overlay.png, "heatmap": ..., "json": ...},
    for the `kinds` written; a "png16" heatmap is <stem>_heatmap.png."""
    suffixes = dict(RESULT_SUFFIXES, heatmap="_heatmap.png" if heatmap_format == "png16" else "_heatmap.npy")
    return {kind: Path(directory) / f"{stem}{suffixes[kind]}" for kind in SAVE_KINDS if kind in kinds}


def refuse_overwriting_inputs(planned: Iterable[str | os.PathLike], inputs: Iterable[str | os.PathLike]) -> None:
    """Raise UsageError when one of the `planned` output paths is one of the `inputs` (compared resolved).

    Call it before writing anything, so a refused run leaves every file as it was.
    """
    sources = {Path(p).resolve() for p in inputs}
    clashes = sorted(p for p in (Path(q).resolve() for q in planned) if p in sources)
    if clashes:
        raise UsageError(f"an output would overwrite the input {clashes[0]}; choose another --out")


def _utf8(text: str) -> bytes:
    """UTF-8 bytes of any str: a file name that is not UTF-8 (bytes Python decoded to lone
    surrogates, e.g. b'caf\\xe9' -> 'caf\\udce9') gives its original bytes, as `os.fsencode` does;
    any other lone surrogate is passed through."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")
