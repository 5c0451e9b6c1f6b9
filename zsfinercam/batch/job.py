"""One chunk of a batch run: images -> maps -> files on disk -> manifest records.

Both batch engines use it: the local engine (`zsfinercam.batch.run`) runs `ChunkJob.run` in its
own process; a Ray worker (`zsfinercam.batch.ray_engine`) gets a chunk decoded by `decode_chunk` on
a CPU task and calls `ChunkJob.map_chunk`. So both write the same names and bytes.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Iterator

from ..errors import UsageError, WorkError
from ..io.files import TMP_PREFIX, image_stem, refuse_overwriting_inputs, result_paths
from ..options import LocateOptions


class ChunkJob:
    """Maps for one chunk of images -> one manifest record per image not yet done.

    Both engines use it: the local one calls `run`; a Ray worker gets the chunk decoded
    by `decode_chunk` on a CPU task and calls `map_chunk`, so the names and bytes agree.
    """

    def __init__(self, loc, out: Path, concepts: list[str], inputs: set[Path], options: LocateOptions):
        self.loc, self.out, self.concepts = loc, out, concepts
        self.inputs, self.options = inputs, options

    def run(self, chunk: list[Path], done: dict[str, dict]) -> Iterator[dict]:
        """Records, in chunk order, for the images of `chunk` that are not in `done`; each
        image's files are saved just before its record is yielded."""
        todo = [p for p in chunk if str(p) not in done]
        yield from self.map_chunk(chunk, todo, *decode_chunk(chunk, todo, self.loc.max_pixels))

    def map_chunk(self, chunk: list[Path], todo: list[Path], arrays: dict, errors: dict) -> Iterator[dict]:
        """Records for `todo` (the images of `chunk` not done yet), given the chunk decoded
        by `decode_chunk`: one trunk pass over every image of `arrays`, files saved per image."""
        if not arrays:
            yield from (error_record(p, errors[p]) for p in todo)
            return
        order = [p for p in chunk if p in arrays]
        try:
            results = self.loc.locate_many([arrays[p] for p in order], self.concepts, self.options)
        except (WorkError, RuntimeError, MemoryError) as err:
            errors.update((p, f"{p}: mapping failed ({type(err).__name__}: {err})") for p in arrays)
            results = []
        by_path = dict(zip(order, results))
        for p in todo:
            yield error_record(p, errors[p]) if p in errors else self._save_or_error(p, by_path[p])

    def _save_or_error(self, path: Path, results) -> dict:
        try:
            return self._save(path, results)
        except (OSError, UnicodeError) as err:  # disk full, name too long, permissions, ...
            return error_record(path, f"{path}: could not save the maps ({type(err).__name__}: {err}); "
                                      f"check the space and permissions of --out")

    def _save(self, path: Path, results) -> dict:
        folder = self.out / image_stem(path)
        for res in results:
            res.source = str(path)  # the file, not the array it was decoded into: names and records say it
        stems = [res.default_stem() for res in results]  # the one naming rule, as locate's
        try:
            refuse_overwriting_inputs((p for s in stems for p in result_paths(folder, s).values()), self.inputs)
        except UsageError as err:
            return error_record(path, f"{path}: {err}")
        outputs = []
        for res, stem in zip(results, stems):
            files = res.save(folder, stem)
            _fsync(files.values())
            record = {k: v for k, v in res.to_dict().items() if k not in ("token_map", "source", "image_size")}
            record["files"] = {k: Path(v).relative_to(self.out).as_posix() for k, v in files.items()}
            outputs.append(record)
        _fsync([folder])
        h, w = results[0].image.shape[:2]
        return {"input": str(path), "status": "ok", "error": None, "image_size": [w, h], "outputs": outputs}


def decode_chunk(chunk: list[Path], todo: list[Path], max_pixels: int | None) -> tuple[dict, dict]:
    """The images of `chunk` as arrays, and the errors of those of `todo` that cannot be read.

    Images already done (in `chunk`, not in `todo`) are still decoded and mapped when others
    of the chunk are, so that every image always shares its trunk pass with the same images
    (identical bytes); a chunk whose `todo` images all fail is not decoded further.
    """
    arrays, errors = _load(todo, max_pixels)
    if arrays:
        pending = set(todo)
        arrays.update(_load([p for p in chunk if p not in pending], max_pixels)[0])
    return arrays, errors


def _load(paths: list[Path], max_pixels: int | None) -> tuple[dict, dict]:
    from ..io.images import load_image  # numpy, PIL and torch: not needed to plan or check a run

    arrays, errors = {}, {}
    for p in paths:
        try:
            arrays[p] = load_image(p, max_pixels=max_pixels)[0]
        except (UsageError, WorkError, OSError) as err:
            errors[p] = str(err)
    return arrays, errors


def error_record(path: Path, message: str) -> dict:
    """The manifest record of an image that failed, `message` its one-line reason."""
    return {"input": str(path), "status": "error", "error": message, "image_size": None, "outputs": []}


def _fsync(paths: Iterable[str | os.PathLike]) -> None:
    """Flush files (and folders: their renames) to disk before the manifest says they exist."""
    for p in paths:
        try:
            fd = os.open(p, os.O_RDONLY)
        except OSError:
            continue  # folders cannot be opened on some systems; the files were synced
        try:
            os.fsync(fd)
        except OSError:
            pass  # not supported for folders here; the data itself is synced
        finally:
            os.close(fd)


def remove_leftovers(out: Path) -> None:
    """Delete the temporary files of writes that a killed process (a run, a worker) left in `out`."""
    for tmp in out.rglob(f"{TMP_PREFIX}*"):
        tmp.unlink(missing_ok=True)
