"""`zsfinercam batch --engine ray`: the same chunks, files and manifest, made on a Ray cluster.

The driver (`run_batch` in zsfinercam.batch.run) finds the inputs, cuts them into the same fixed
chunks as the local engine and owns the manifest; here a pool of Ray actors maps the chunks still
to do:

    chunk of paths -> decoded by a CPU task (`decode_chunk`, errors kept per image)
                   -> mapped by an actor of the pool (each loads the model once; `map_chunk`
                      writes each image's files, atomically, under the same names)
                   -> records back to the driver, yielded in chunk order, appended and fsynced.

A chunk is the unit of work everywhere, so every image shares its trunk pass with the same images
as in a local run and the bytes agree. A worker (decode task or actor) that dies on a chunk is
replaced and the chunk tried again, `max_retries` times at most; then the chunk is split in
halves, each tried once and halved again when its worker dies, down to the single image, which
gets `max_retries` retries of its own before it is recorded as failed ("worker died N times on
this image"). So a poisonous image (a decoder crash, an out-of-memory) fails itself only, and the
run ends; `--resume` tries it again. Images of a split chunk share smaller trunk passes, so their
files may differ from a local run's in the last bits. A driver that dies is resumed with --resume.

A cluster started for the run listens on 127.0.0.1 only (see `import_ray` and `_connect`): Ray's
servers listen on every address unless the node's address is 127.0.0.1, which Ray takes for a node
it starts when LOOPBACK_ENV is "0" as it is imported. No dashboard, job server or client server is started.
Joining a cluster (`address`) uses that cluster as it is. Ray is imported only here.
"""
from __future__ import annotations

import contextlib
import itertools
import os
import sys
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from .job import ChunkJob, decode_chunk, error_record, remove_leftovers
from ..errors import UsageError, WorkError, first_line
from ..io.progress import note
from ..options import LocateOptions

INSTALL_HINT = 'pip install "zsfinercam[ray]"'
LOOPBACK = "127.0.0.1"
# Read by Ray when it is imported: "0" makes a node that this process starts take 127.0.0.1 as its
# address (as Ray does on Windows and macOS), so its GCS, raylet, object manager and workers bind loopback.
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
DEFAULT_MAX_RETRIES = 2
# Test-only switches, read by the driver and handed to the map workers; never set them in real runs.
# "N:FILE": a worker exits (as if killed) after the Nth image it mapped, once, creating FILE so that
# its replacement and the other workers carry on.
TEST_EXIT_ENV = "ZSFINERCAM_TEST_WORKER_EXIT"
# "NAME": a worker exits whenever it is about to map the image file named NAME (a poisonous image).
TEST_POISON_ENV = "ZSFINERCAM_TEST_POISON_IMAGE"


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide a Ray run is.

    Attributes:
        address: None starts a cluster on this machine for the run, listening on 127.0.0.1 only;
            "auto" or "HOST:PORT" joins a running one.
        workers: map actors, each holding one copy of the model.
        gpus_per_worker: GPUs reserved per actor (fractions share a GPU); 0 = CPU.
        cpus_per_worker: CPUs reserved per actor.
        max_retries: retries of a chunk whose worker dies, before it is split to find the image
            at fault; a single image gets as many before it is recorded as failed.
        threads: torch's CPU threads in each actor; None = this process's count (then the bytes
            agree with a local run on this machine: the maps' last bits depend on it).
    """

    address: str | None = None
    workers: int = 1
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    max_retries: int = DEFAULT_MAX_RETRIES
    threads: int | None = None

    def __post_init__(self):
        for name, low in (("workers", 1), ("max_retries", 0), ("threads", 1)):
            value = getattr(self, name)
            if name == "threads" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise UsageError(f"{name} must be an integer >= {low}, got {value!r}")
        for name in ("gpus_per_worker", "cpus_per_worker"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise UsageError(f"{name} must be a number >= 0, got {value!r}")


def import_ray(local: bool = True):
    """The ray module, or a UsageError naming the extra to install.

    Args:
        local: the run will start its own cluster: if ray is not imported yet, set LOOPBACK_ENV
            first, so that the cluster listens on 127.0.0.1 only.
    """
    if local and "ray" not in sys.modules:
        os.environ[LOOPBACK_ENV] = "0"
    try:
        import ray
    except ImportError:
        raise UsageError(f"--engine ray needs Ray, which is not installed; {INSTALL_HINT}") from None
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

    ray = import_ray(local=options.address is None)
    job = {"load_args": _worker_load_args(loc), "out": str(out), "concepts": concepts,
           "inputs": [str(p) for p in paths], "locate": locate.to_json(),
           "threads": options.threads or torch.get_num_threads(),
           "test_exit": os.environ.get(TEST_EXIT_ENV), "test_poison": os.environ.get(TEST_POISON_ENV)}

    def chunks(cut: list[list[Path]], done: dict[str, dict]) -> Iterator[tuple[list[Path], list[dict]]]:
        work = [c for c in cut if any(str(p) not in done for p in c)]
        for chunk in cut:
            if not any(str(p) not in done for p in chunk):
                yield chunk, []  # nothing to do: counted as skipped
        if not work:
            return
        # Ray reports dead workers on stdout, the summary's, from a thread that a shutdown stops
        with contextlib.redirect_stdout(sys.stderr):
            yield from _on_cluster(ray, options, lambda: _Pool(ray, job, options, loc.max_pixels).run(work, done))
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
    """Join the cluster at `address`, or start one for this run on loopback; False when this process
    was connected already (then the run leaves the connection as it found it).

    Raises:
        UsageError: ray was imported before `import_ray` could ask for loopback.
    """
    if ray.is_initialized():
        return False
    quiet = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    if address:
        ray.init(address=address, **quiet)
        return True
    if ray.util.get_node_ip_address() != LOOPBACK:
        raise UsageError(f"a Ray cluster that zsfinercam starts listens on {LOOPBACK} only, but ray was imported "
                         f"before it could ask for that; set {LOOPBACK_ENV}=0 in the environment, or start a "
                         f"cluster yourself and pass its address")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no reports home from a cluster we start
    ray.init(address="local", **quiet)  # "local": a new cluster, never one found on this machine
    return True


def _on_cluster(ray, options: RayOptions, run) -> Iterator:
    """What `run()` yields, on the cluster of `options`: joined, or started for the run and stopped after."""
    connected = _connect(ray, options.address)
    try:
        if connected and not options.address:
            _check_fits(ray.cluster_resources(), options)
        yield from run()
    except ray.exceptions.RayError as err:  # a worker that cannot start, a cluster that went away
        raise _stopped(err) from err
    finally:
        if connected:
            ray.shutdown()  # a cluster started here stops; a joined one is only left


def _check_fits(have: dict, options: RayOptions) -> None:
    """Refuse a pool larger than the cluster started for the run (this machine's CPUs and GPUs),
    whose last workers would wait forever. A joined cluster may grow (an autoscaler): not checked."""
    for name, flag, each in (("CPU", "--cpus-per-worker", options.cpus_per_worker),
                             ("GPU", "--gpus-per-worker", options.gpus_per_worker)):
        if options.workers * each > have.get(name, 0):
            raise UsageError(f"--workers {options.workers} with {each:g} {name} each needs "
                             f"{options.workers * each:g} {name}s, and this machine has {have.get(name, 0):g}; "
                             f"lower --workers or {flag}")


def _stopped(err: Exception) -> WorkError:
    return WorkError(f"the Ray job stopped ({type(err).__name__}: {first_line(err)}); the manifest keeps "
                     f"what was done: fix the cause and rerun with --resume")


@dataclass
class _Part:
    """A chunk, or a piece of one after a split: the images of one trunk pass."""

    index: int  # the chunk's place in the run
    paths: list[Path]
    pending: list[bool]  # per image: a record is wanted (not done by an earlier run)
    whole: bool = True  # the chunk as cut (False: a piece of a split)
    deaths: int = 0  # workers that died on it
    decoded: object = None  # the ObjectRef of its decode task, once submitted

    def halves(self) -> list["_Part"]:
        mid = len(self.paths) // 2
        parts = [_Part(self.index, self.paths[a:b], self.pending[a:b], whole=False)
                 for a, b in ((0, mid), (mid, len(self.paths)))]
        return [p for p in parts if any(p.pending)]


@dataclass(eq=False)
class _Worker:
    actor: object
    ready: object  # the ObjectRef of its `threads` call: resolved once it has loaded the model
    started: bool = False  # `ready` resolved here: it may be given work


class _Chunks:
    """Records per chunk as parts come back; hands out finished chunks in order."""

    def __init__(self, work: list[list[Path]], done: dict[str, dict]):
        self.work, self.done, self.next = work, done, 0
        self.records = [{} for _ in work]
        self.missing = [sum(str(p) not in done for p in chunk) for chunk in work]

    def add(self, index: int, records: list[dict]) -> Iterator[tuple[list[Path], list[dict]]]:
        self.records[index].update((r["input"], r) for r in records)
        self.missing[index] -= len(records)
        while self.next < len(self.work) and not self.missing[self.next]:
            chunk, got = self.work[self.next], self.records[self.next]
            self.records[self.next] = None  # handed out: not kept for the rest of the run
            self.next += 1
            yield chunk, [got[str(p)] for p in chunk if str(p) not in self.done]


class _Pool:
    """The map actors: one part each at a time, the next parts' decoding submitted ahead. An actor
    gets work once it has answered `threads`, so a death is never mistaken for a failed start."""

    def __init__(self, ray, job: dict, options: RayOptions, max_pixels: int | None):
        self.ray, self.job, self.options, self.max_pixels = ray, job, options, max_pixels
        # decode tasks reserve no CPU, so actors that hold every CPU of the cluster cannot starve them
        self.decode = ray.remote(_decode_part).options(num_cpus=0, max_retries=0)
        self.actor_class = ray.remote(_MapWorker).options(
            num_cpus=options.cpus_per_worker, num_gpus=options.gpus_per_worker or None, max_restarts=0,
            max_task_retries=0)
        self.died = (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError,
                     ray.exceptions.OutOfMemoryError, ray.exceptions.NodeDiedError)
        self.workers = [self._start() for _ in range(options.workers)]

    def _start(self) -> _Worker:
        actor = self.actor_class.remote(self.job)
        return _Worker(actor, actor.threads.remote())

    def run(self, work: list[list[Path]], done: dict[str, dict]) -> Iterator[tuple[list[Path], list[dict]]]:
        """The (chunk, records) pairs of `work`, in chunk order; the actors are killed at the end."""
        try:
            threads = sorted({self.ray.get(w.ready) for w in self.workers})  # raises if a model cannot load
            for worker in self.workers:
                worker.started = True
            n = len(self.workers)
            note(f"mapping on {n} Ray worker{'s' * (n > 1)}, {'/'.join(map(str, threads))} torch threads each ...")
            yield from self._map(work, done)
        finally:
            for worker in self.workers:
                self.ray.kill(worker.actor)

    def _map(self, work: list[list[Path]], done: dict[str, dict]) -> Iterator[tuple[list[Path], list[dict]]]:
        queue = deque(_Part(i, chunk, [str(p) not in done for p in chunk]) for i, chunk in enumerate(work))
        chunks, running = _Chunks(work, done), {}
        while queue or running:
            self._assign(queue, running)
            starting = {w.ready: w for w in self.workers if not w.started}
            [ref], _ = self.ray.wait([*running, *starting], num_returns=1)
            if ref in starting:
                self.ray.get(ref)  # raises (the run stops) if the new actor cannot load the model
                starting[ref].started = True
                continue
            worker, part = running.pop(ref)
            yield from chunks.add(part.index, self._outcome(ref, worker, part, queue))

    def _assign(self, queue: deque, running: dict) -> None:
        busy = {id(w) for w, _ in running.values()}
        for worker in self.workers:
            if worker.started and id(worker) not in busy and queue:
                part = queue.popleft()
                running[worker.actor.map.remote(self._decoded(part))] = worker, part
        for part in itertools.islice(queue, len(self.workers)):  # decoded while the actors map
            self._decoded(part)

    def _decoded(self, part: _Part):
        if part.decoded is None:
            names = [str(p) for p in part.paths]
            part.decoded = self.decode.remote(names, part.pending, self.max_pixels)
        return part.decoded

    def _outcome(self, ref, worker: _Worker, part: _Part, queue: deque) -> list[dict]:
        """The records of a part that came back. For a part whose worker died: none, the part
        queued again or split (module docstring), or its one image's error record."""
        try:
            return self.ray.get(ref)
        except self.died as err:
            if isinstance(err, self.ray.exceptions.RayActorError):
                self.workers[self.workers.index(worker)] = self._start()
        part.deaths, part.decoded = part.deaths + 1, None
        if part.deaths < (1 + self.options.max_retries if part.whole or len(part.paths) == 1 else 1):
            queue.appendleft(part)
        elif len(part.paths) > 1:
            queue.extendleft(reversed(part.halves()))
        else:
            path = part.paths[0]
            return [error_record(path, f"{path}: worker died {part.deaths} times on this image (a crash or out "
                                       f"of memory while decoding or mapping it); check the file, then rerun "
                                       f"with --resume to try it again")]
        return []


def _decode_part(names: list[str], pending: list[bool], max_pixels: int | None) -> tuple:
    """CPU task: a part's paths -> the part decoded (errors per image, never raised)."""
    chunk = [Path(n) for n in names]
    todo = [p for p, wanted in zip(chunk, pending) if wanted]
    return (chunk, todo, *decode_chunk(chunk, todo, max_pixels))


class _MapWorker:
    """Actor: loads the model once; per decoded part, maps it, saves the files, returns the records."""

    def __init__(self, job: dict):
        import torch

        from ..localizer import Localizer

        torch.set_num_threads(job["threads"])
        loc = Localizer.from_pretrained(**job["load_args"])
        self.job = ChunkJob(loc, Path(job["out"]), job["concepts"], {Path(p) for p in job["inputs"]},
                            LocateOptions.from_json(job["locate"]))
        self.mapped = 0
        self.test_exit, self.test_poison = job["test_exit"], job["test_poison"]

    def threads(self) -> int:
        """torch's CPU threads here, as the maps will use them; answered once the model is loaded."""
        import torch

        return torch.get_num_threads()

    def map(self, decoded: tuple) -> list[dict]:
        chunk, todo, arrays, errors = decoded
        if self.test_poison and any(p.name == self.test_poison for p in arrays):
            os._exit(1)  # TEST-ONLY: see TEST_POISON_ENV
        records = list(self.job.map_chunk(chunk, todo, arrays, errors))
        self.mapped += len(todo)
        self._test_only_exit()
        return records

    def _test_only_exit(self) -> None:
        """TEST-ONLY: see TEST_EXIT_ENV. Exits after the part's files are written and before its
        records are returned, the worst moment for a worker to die."""
        if not self.test_exit:
            return
        count, marker = self.test_exit.split(":", 1)
        if self.mapped >= int(count) and not os.path.exists(marker):
            Path(marker).touch()
            os._exit(1)
