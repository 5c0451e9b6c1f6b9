"""Many images in one run: inputs -> fixed chunks -> maps on disk, with a resumable manifest.

`find_images` turns files, folders and glob patterns into one sorted, deduplicated list.
`run_batch` cuts that list into fixed chunks of `batch_size` images (one trunk pass
each) and writes, per image, the saved maps under `out/<image key>/` and one JSON record
appended to `out/manifest.jsonl`, flushed and fsynced, so a killed run loses at most the
chunk in flight. A chunk is always the same images (those that load), so a resumed run
writes the same bytes as an uninterrupted one. `engine="ray"` maps the same chunks on a Ray
cluster (zsfinercam.batch.ray_engine); both run `batch_job.ChunkJob`, the same per-chunk work.
"""
from __future__ import annotations

import glob
import json
import os
import re
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from .job import ChunkJob, remove_leftovers
from ..errors import UsageError, WorkError
from ..io.files import MANIFEST_NAME, RESULT_FILE, SAFE_STEM, atomic_write, check_out_dir, json_bytes
from ..options import LocateOptions, unique_concepts

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".webp", ".tif",
                            ".tiff", ".ppm", ".pgm", ".pbm", ".pnm"})  # what a folder scan picks up
SETTINGS_NAME = "run.json"  # what the maps mean (concepts, contrast, model); --resume must match it
OUTPUT_FOLDER = re.compile(SAFE_STEM)  # out/<image key>/, one per image, holding its results' files
DEFAULT_BATCH_SIZE = 8
ENGINES = ("local", "ray")  # where the maps are made: this process, or a Ray cluster (zsfinercam.batch.ray_engine)


def find_images(inputs: Iterable[str | os.PathLike], *, recursive: bool = False,
                exclude: str | os.PathLike | None = None) -> list[Path]:
    """Resolved image paths from files, folders and glob patterns, sorted and deduplicated.

    A named file is taken whatever its extension; a folder gives its files with an image
    extension (`IMAGE_SUFFIXES`, any case; hidden files and folders skipped; subfolders
    only when `recursive`); a pattern (`*`, `?`, `[...]`, `**`) is expanded here too, for
    shells that do not. `exclude` (the output folder) is never walked into nor taken from a
    pattern, and the files a batch run writes into it are never picked up, so outputs never
    become inputs on a rerun; other folders inside it, named or matched, are read.

    Raises:
        UsageError: an input neither exists nor matches, `exclude` is named as an input
            folder, or nothing was found.
    """
    skip = Path(exclude).resolve() if exclude is not None else None
    found: dict[Path, None] = {}
    for raw in inputs:
        named = Path(str(raw)).expanduser().exists()  # not a pattern
        for path in _expand(str(raw)):
            if not named and skip is not None and (path.resolve() == skip or _written_by_batch(path, skip)):
                continue  # a pattern matched the output folder or a file a run wrote there
            files = _scan(path, recursive, skip) if path.is_dir() else [path]
            found.update((f.resolve(), None) for f in files)
    if not found:
        kinds = ", ".join(sorted(IMAGE_SUFFIXES))
        raise UsageError(f"no images found in {', '.join(map(str, inputs))} (extensions: {kinds}); "
                         f"check the paths, or pass --recursive for subfolders")
    return sorted(found, key=str)


def _expand(raw: str) -> list[Path]:
    path = Path(raw).expanduser()
    if path.exists():
        return [path]
    if glob.has_magic(raw):
        matches = sorted(glob.glob(os.path.expanduser(raw), recursive=True))
        if not matches:
            raise UsageError(f"no files match {raw!r}; check the pattern")
        return [Path(m) for m in matches]
    raise UsageError(f"input not found: {raw}; check the path")


def _scan(folder: Path, recursive: bool, skip: Path | None) -> list[Path]:
    if skip is not None and folder.resolve() == skip:
        raise UsageError(f"--out {skip} is the input folder itself; choose another folder, "
                         f"e.g. {skip / 'zsfinercam_out'}")
    out = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if recursive and not d.startswith(".")
                   and (skip is None or (Path(root) / d).resolve() != skip)]
        out += [Path(root) / f for f in files if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_SUFFIXES
                and not (skip is not None and _written_by_batch(Path(root) / f, skip))]
    return out


def _written_by_batch(path: Path, out: Path) -> bool:
    """Whether `path` is a file a batch run writes into `out`: its manifest, its settings, or
    one of the maps in out/<image key>/ (recognised by name, as `safe_stem` makes them)."""
    if path.name in (MANIFEST_NAME, SETTINGS_NAME):
        return path.parent.resolve() == out
    return bool(RESULT_FILE.fullmatch(path.name) and OUTPUT_FOLDER.fullmatch(path.parent.name)
                and path.parent.parent.resolve() == out)


@dataclass
class BatchSummary:
    """What a run did; `line()` is the one-line report."""

    manifest: Path
    ok: int = 0
    failed: int = 0
    skipped: int = 0  # done by an earlier run (--resume)
    seconds: float = 0.0
    errors: dict[str, str] = field(default_factory=dict)  # input -> message, this run's failures

    def line(self) -> str:
        return (f"batch: {self.ok} ok, {self.failed} failed, {self.skipped} skipped in {self.seconds:.1f} s; "
                f"manifest: {self.manifest}")


def run_batch(loc, images: Sequence[str | os.PathLike], out: str | os.PathLike, concepts: Sequence[str], *,
              resume: bool = False, batch_size: int = DEFAULT_BATCH_SIZE, progress: bool | None = None,
              engine: str = "local", ray=None, options: LocateOptions | None = None, **keywords) -> BatchSummary:
    """Map `concepts` in every image and write outputs plus a manifest into `out`.

    Args:
        loc: a Localizer; image files above its `max_pixels` are recorded as failed. For
            engine="ray" it must come from `Localizer.from_pretrained` (the workers load the
            model again from its `load_args`).
        images: image files (see `find_images`), processed in the given order.
        out: output folder; `out/manifest.jsonl` gets one record per image, `out/run.json`
            the settings, `out/<image key>/` the files of `LocateResult.save`.
        resume: continue the run in `out`, skipping images whose "ok" record and output
            files exist; without it a non-empty manifest there is a UsageError.
        batch_size: images per trunk pass.
        progress: tqdm bar on stderr; None = only when stderr is a terminal.
        engine: "local" (this process) or "ray" (an actor pool on a Ray cluster; needs
            `pip install "zsfinercam[ray]"`); both write the same files and records.
        ray: for engine="ray", a `zsfinercam.batch.ray_engine.RayOptions` (cluster address, workers,
            GPUs and CPUs per worker); None = a local cluster with one worker.
        options: what shapes the maps (a `LocateOptions`), recorded in out/run.json;
            or give its fields as keywords (vs=, vocab=, alpha=, method=, ...), not both.

    Returns:
        The counts; an image that cannot be read or mapped is recorded with its error and
        the run goes on. Later records for an input supersede earlier ones.
    """
    options = LocateOptions.build(options, **keywords)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise UsageError(f"batch_size must be a positive integer, got {batch_size!r}")
    if engine not in ENGINES:
        raise UsageError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if ray is not None and engine != "ray":
        raise UsageError("Ray options apply to engine='ray' only; pass engine='ray' or drop them")
    names = unique_concepts(concepts)
    paths = list(dict.fromkeys(Path(p).resolve() for p in images))
    out = Path(out).resolve()
    if out in paths:
        raise UsageError(f"--out {out} is one of the input files; choose another folder")
    check_out_dir(out, resume)
    if engine == "ray":
        from .ray_engine import RayOptions, run_chunks_on_ray

        chunks = run_chunks_on_ray(loc, out, names, paths, options, ray or RayOptions())
    else:
        chunks = _run_chunks_here(ChunkJob(loc, out, names, set(paths), options))
    summary = BatchSummary(out / MANIFEST_NAME)
    start = time.perf_counter()
    with _Manifest(out) as manifest:
        done = manifest.start(resume, _settings(loc, names, loc.options(options)), engine=engine)
        cut = [paths[i:i + batch_size] for i in range(0, len(paths), batch_size)]  # fixed: same bytes on resume
        with _bar(len(paths), progress) as bar:
            for chunk, records in chunks(cut, done):
                for record in records:
                    manifest.append(record)
                    _count(summary, record)
                summary.skipped += sum(str(p) in done for p in chunk)
                bar.update(len(chunk))
    summary.seconds = time.perf_counter() - start
    return summary


def _run_chunks_here(job: "ChunkJob"):
    """The local engine: chunks are mapped one after the other in this process."""
    def chunks(cut: list[list[Path]], done: dict[str, dict]) -> Iterator[tuple[list[Path], Iterator[dict]]]:
        for chunk in cut:
            yield chunk, job.run(chunk, done)
    return chunks


def _count(summary: BatchSummary, record: dict) -> None:
    if record["status"] == "ok":
        summary.ok += 1
    else:
        summary.failed += 1
        summary.errors[record["input"]] = record["error"]
        warnings.warn(record["error"], stacklevel=3)


def _bar(total: int, progress: bool | None):
    from tqdm import tqdm

    return tqdm(total=total, desc="batch", unit="img", file=sys.stderr, dynamic_ncols=True,
                disable=None if progress is None else not progress)


def _settings(loc, concepts: list[str], options: LocateOptions) -> dict:
    """What the maps mean; a resumed run must use the same (batch size, device and the
    pixel limit may change)."""
    cfg = loc.config
    try:
        text = loc.backend.fingerprint()
    except NotImplementedError:
        text = None
    model = {"name": cfg.name, "pretrained": cfg.pretrained, "image_size": list(cfg.image_size), "text": text}
    return {"concepts": concepts, "locate": options.to_json(), "model": model}


class _Manifest:
    """out/manifest.jsonl: appended one record a line, each flushed and fsynced."""

    def __init__(self, out: Path):
        self.out, self.path = out, out / MANIFEST_NAME
        self._file = None
        self._lock = None

    def __enter__(self) -> "_Manifest":
        return self

    def __exit__(self, *exc) -> None:
        for f in (self._file, self._lock):
            if f is not None:
                f.close()

    def start(self, resume: bool, settings: dict, engine: str = "local") -> dict[str, dict]:
        """Lock the folder, check and write the settings (and the engine, which a resumed run
        may change), repair a torn last line, remove stale temporary files; returns the
        records of images already done."""
        self.out.mkdir(parents=True, exist_ok=True)
        self._lock = _lock(self.out)
        check_out_dir(self.out, resume)  # again under the lock: another run may have finished meanwhile
        _check_settings(self.out / SETTINGS_NAME, settings, resume and _non_empty(self.path), engine)
        done = self._done() if self.path.is_file() else {}
        remove_leftovers(self.out)
        self._file = open(self.path, "ab")  # json_bytes: UTF-8, odd file names escaped
        return done

    def append(self, record: dict) -> None:
        self._file.write(json_bytes(record, sort_keys=True) + b"\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def _done(self) -> dict[str, dict]:
        """Latest record per input, kept when "ok" and all its files are there."""
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):  # killed mid-write: drop the torn line
            with open(self.path, "r+b") as f:
                f.truncate(data.rfind(b"\n") + 1)
            data = data[:data.rfind(b"\n") + 1]
        latest = {}
        for n, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
            try:
                record = json.loads(line)
                latest[record["input"]] = record
            except (ValueError, KeyError, TypeError):
                raise WorkError(f"{self.path} line {n} is not a manifest record; remove that line "
                                f"or choose another --out") from None
        return {k: r for k, r in latest.items() if r.get("status") == "ok" and self._files_exist(r)}

    def _files_exist(self, record: dict) -> bool:
        files = [self.out / f for o in record.get("outputs", []) for f in o.get("files", {}).values()]
        return bool(files) and all(f.is_file() and f.stat().st_size > 0 for f in files)


def _non_empty(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 0


def _check_settings(path: Path, settings: dict, resuming: bool, engine: str) -> None:
    if resuming and path.is_file():
        try:
            before = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise WorkError(f"cannot read {path} ({err}); choose another --out") from None
        changed = sorted(k for k in settings if before.get(k) != settings[k])
        if changed:
            raise UsageError(f"{path.parent} holds a run with other {', '.join(changed)}; resume with the "
                             f"same concepts, contrast options and model, or choose another --out")
    record = {**settings, "engine": engine}
    atomic_write(path, lambda f: f.write(json_bytes(record, indent=1, sort_keys=True)))


def _lock(out: Path):
    """An exclusive lock on out/.lock for the run (POSIX); a second run on the folder is refused."""
    try:
        import fcntl
    except ImportError:  # Windows: no lock
        return None
    f = open(out / ".lock", "w")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        raise UsageError(f"another zsfinercam batch is writing to {out}; wait for it or choose another --out") \
            from None
    return f
