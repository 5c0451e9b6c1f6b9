"""`zsfinercam batch --engine ray`: the same chunks, files and manifest, made on a Ray cluster.

The driver (`run_batch` in zsfinercam.batch.run) finds the inputs, cuts them into the same fixed
chunks as the local engine and owns the manifest; Ray Data turns the chunks still to do into
a streaming pipeline:

    chunks of paths -> decode on CPU tasks (`decode_chunk`, errors kept per image)
                    -> maps on an actor pool (each actor loads the model once; `map_chunk`
                       writes each image's files, atomically, under the same names)
                    -> records back to the driver, in chunk order, appended and fsynced.

A chunk is the unit of work everywhere, so every image shares its trunk pass with the same
images as in a local run and the bytes agree. A worker that dies is restarted by Ray and its
chunk redone (the files are rewritten whole, the manifest only gets records the driver
received); a driver that dies is resumed with --resume. Ray is imported only here.
"""
from __future__ import annotations

import contextlib
import os
import pickle
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from .job import ChunkJob, decode_chunk, remove_leftovers
from ..errors import UsageError, WorkError, first_line
from ..options import LocateOptions

INSTALL_HINT = 'pip install "zsfinercam[ray]"'
# Test-only switch: "N:FILE" makes a map worker exit (as if killed) after the Nth image it mapped, once,
# creating FILE so that its restarted self and the other workers carry on. Never set it in real runs.
TEST_EXIT_ENV = "ZSFINERCAM_TEST_WORKER_EXIT"


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide a Ray run is.

    Attributes:
        address: None starts a local cluster on this machine (Ray binds the node's address); "auto" or
            "HOST:PORT" joins a running one.
        workers: map actors, each holding one copy of the model.
        gpus_per_worker: GPUs reserved per actor (fractions share a GPU); 0 = CPU.
        cpus_per_worker: CPUs reserved per actor (decode tasks take one CPU each).
    """

    address: str | None = None
    workers: int = 1
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0

    def __post_init__(self):
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 1:
            raise UsageError(f"workers must be a positive integer, got {self.workers!r}")
        for name in ("gpus_per_worker", "cpus_per_worker"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise UsageError(f"{name} must be a number >= 0, got {value!r}")


def import_ray():
    """The ray module, or a UsageError naming the extra to install."""
    try:
        import ray
        import ray.data
    except ImportError:
        raise UsageError(f"--engine ray needs Ray Data, which is not installed; {INSTALL_HINT}") from None
    return ray


def run_chunks_on_ray(loc, out: Path, concepts: list[str], paths: list[Path], locate: "LocateOptions",
                      options: RayOptions):
    """The Ray engine for `run_batch`: a function (chunks, done) -> (chunk, records) pairs in
    chunk order, as the local engine's. Checks Ray and the model's load arguments now; the
    cluster is started (or joined) when the pairs are first asked for.

    Args:
        loc: a Localizer made by `from_pretrained` (its `load_args` are sent to the workers).
        out, concepts, paths: as `run_batch` has them.
        locate: what shapes the maps; it travels to the workers as `LocateOptions.to_json()`.
        options: the cluster and the pool.
    """
    import torch

    ray = import_ray()
    model = _worker_load_args(loc)
    # On CPU the maps' last bits depend on torch's intra-op thread count (how sums are split), and Ray
    # gives a worker one thread per reserved CPU: workers use this process's count, so bytes agree.
    job = {"load_args": model, "out": str(out), "concepts": concepts, "inputs": [str(p) for p in paths],
           "locate": locate.to_json(), "threads": torch.get_num_threads()}

    def chunks(cut: list[list[Path]], done: dict[str, dict]) -> Iterator[tuple[list[Path], list[dict]]]:
        work = [c for c in cut if any(str(p) not in done for p in c)]
        for chunk in cut:
            if not any(str(p) not in done for p in chunk):
                yield chunk, []  # nothing to do: counted as skipped
        if not work:
            return
        started = _connect(ray, options.address)
        try:
            yield from _stream(ray, work, done, job, options, loc.max_pixels)
        finally:
            if started:
                ray.shutdown()
        remove_leftovers(out)  # temporary files of workers that were killed mid-write
    return chunks


def _worker_load_args(loc) -> dict:
    args = getattr(loc, "load_args", None)
    if args is None:
        raise UsageError("engine='ray' needs a Localizer made by Localizer.from_pretrained (the workers load "
                         "the model from its arguments); load it that way or use engine='local'")
    args = dict(args)
    for key in ("pretrained", "model_config"):  # workers may run in another folder
        if isinstance(args.get(key), (str, os.PathLike)) and os.path.exists(args[key]):
            args[key] = os.path.abspath(args[key])
    return args


def _connect(ray, address: str | None) -> bool:
    """Join the cluster at `address`, or start a local one; True when started here."""
    if ray.is_initialized():
        return False
    quiet = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    if address:
        ray.init(address=address, **quiet)
    else:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no reports home from a cluster we start
        ray.init(**quiet)
    return True


def _stream(ray, work: list[list[Path]], done: dict[str, dict], job: dict, options: RayOptions,
            max_pixels: int | None) -> Iterator[tuple[list[Path], list[dict]]]:
    rows = [{"chunk": pickle.dumps(([str(p) for p in c], [str(p) not in done for p in c]))} for c in work]
    context = ray.data.DataContext.get_current()
    saved = context.execution_options.preserve_order, context.enable_progress_bars
    context.execution_options.preserve_order = True  # records come back in chunk order, as in a local run
    context.enable_progress_bars = False  # run_batch has its own bar
    quiet = contextlib.redirect_stdout(sys.stderr)  # Ray prints task retries on stdout, which is the summary's
    try:
        with quiet:
            ds = ray.data.from_items(rows, override_num_blocks=len(rows))
            ds = ds.map(_decode_row, fn_kwargs={"max_pixels": max_pixels}, num_cpus=1)
            ds = ds.map(_MapWorker, fn_constructor_kwargs={"job": job, "test_exit": os.environ.get(TEST_EXIT_ENV)},
                        compute=ray.data.ActorPoolStrategy(size=options.workers),
                        num_gpus=options.gpus_per_worker or None, num_cpus=options.cpus_per_worker)
            # Ray Data restarts a pool's dead actors and retries their tasks (max_restarts and
            # max_task_retries default to -1 there; passing them is deprecated since Ray 2.60).
            for chunk, row in zip(work, ds.iter_rows(), strict=True):
                records = pickle.loads(row["records"])
                if [r["input"] for r in records] != [str(p) for p in chunk if str(p) not in done]:
                    raise RuntimeError("Ray returned the chunks out of order")  # preserve_order prevents it
                yield chunk, records
    except ray.exceptions.RayError as err:  # a worker that cannot start, a cluster that went away
        raise WorkError(f"the Ray job stopped ({type(err).__name__}: {first_line(err)}); the manifest keeps "
                        f"what was done: fix the cause and rerun with --resume") from err
    finally:
        context.execution_options.preserve_order, context.enable_progress_bars = saved


def _decode_row(row: dict, max_pixels: int | None) -> dict:
    """CPU task: one chunk of paths -> the chunk decoded (errors per image, never raised)."""
    names, pending = pickle.loads(row["chunk"])
    chunk = [Path(n) for n in names]
    todo = [p for p, wanted in zip(chunk, pending) if wanted]
    arrays, errors = decode_chunk(chunk, todo, max_pixels)
    return {"decoded": pickle.dumps((chunk, todo, arrays, errors), protocol=pickle.HIGHEST_PROTOCOL)}


class _MapWorker:
    """Actor: loads the model once; per decoded chunk, maps it, saves the files, returns the records."""

    def __init__(self, job: dict, test_exit: str | None = None):
        import torch

        from ..localizer import Localizer

        torch.set_num_threads(job["threads"])
        loc = Localizer.from_pretrained(**job["load_args"])
        self.job = ChunkJob(loc, Path(job["out"]), job["concepts"], {Path(p) for p in job["inputs"]},
                        LocateOptions.from_json(job["locate"]))
        self.mapped = 0
        self.test_exit = test_exit

    def __call__(self, row: dict) -> dict:
        chunk, todo, arrays, errors = pickle.loads(row["decoded"])
        records = list(self.job.map_chunk(chunk, todo, arrays, errors))
        self.mapped += len(todo)
        self._test_only_exit()
        return {"records": pickle.dumps(records, protocol=pickle.HIGHEST_PROTOCOL)}

    def _test_only_exit(self) -> None:
        """TEST-ONLY: see TEST_EXIT_ENV. Exits after the chunk's files are written and before its
        records are returned, the worst moment for a worker to die."""
        if not self.test_exit:
            return
        count, marker = self.test_exit.split(":", 1)
        if self.mapped >= int(count) and not os.path.exists(marker):
            Path(marker).touch()
            os._exit(1)
