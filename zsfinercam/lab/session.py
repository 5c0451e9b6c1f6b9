"""The prompt lab's logic, without gradio: parse a request, run it, lay out the results.

An image is encoded once and its ImageFeatures kept in a `FeatureCache` keyed by the
hash of the file's bytes, so a new prompt on a cached image costs text encoding and
small matrix products (the per-image Jacobian is built on first use and kept).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UsageError

if TYPE_CHECKING:
    from ..compare import Comparison
    from ..core.engine import ImageFeatures
    from ..localizer import Localizer
    from ..options import LocateOptions

DEFAULT_CONTRAST = "default"  # the page's name for "no rule given": vs with references, else logits
MODEL_VOCAB = "model classes"  # the page's name for vocab=None: the model's own classes
CELL = 320  # pixels per map in the page: readable, and small enough to send quickly
NEIGHBOURS = 5
RULES = {
    "logits": "the closest logits on this image among the vocabulary",
    "text": "the nearest text embeddings in the vocabulary",
    "vs": "the references you gave",
    "generic": "the vocabulary's category",
    "parts": "the other attributes of the concept's part, and the same trait on other parts",
    "none": "none (the CAM base alone)",
}


@dataclass(frozen=True)
class LabRequest:
    """One press of "Locate": what the page (or the API) asked for, parsed and checked."""

    concepts: tuple[str, ...]
    references: tuple[str, ...] = ()
    contrast: str | None = None
    vocab: str | None = None
    templates: str | None = None
    alpha: float | None = None
    method: str = "finer"
    objective: str = "weighted"
    base: str | None = None  # the CAM base (options.BASES); None: the model's default (`Localizer.options`)
    zoom: bool = False  # map each concept in a window on the subject (LocateOptions.zoom)
    faithfulness: bool | str = False  # options.FAITHFULNESS


def parse_lines(text: str | None) -> list[str]:
    """Non-blank lines of `text`, stripped, first occurrence kept (one concept per line)."""
    lines = [line.strip() for line in (text or "").splitlines()]
    return list(dict.fromkeys(line for line in lines if line))


def parse_request(concepts: str | None, references: str | None = "", contrast: str | None = DEFAULT_CONTRAST,
                  vocab: str | None = MODEL_VOCAB, alpha: float | None = None, templates: str | None = None,
                  method: str = "finer", objective: str = "weighted", base: str | None = None,
                  zoom: bool = False, faithfulness: str | None = "off") -> LabRequest:
    """A LabRequest from the page's widget values; vocabularies and template sets are only the
    shipped names (a browser never names a server file). `faithfulness`: a key of
    options.FAITHFULNESS_NAMES.

    Raises:
        UsageError: blank concepts, an unknown vocabulary, template set, rule or base, a bad alpha
            (the values of options are checked by `LocateOptions`, as everywhere).
    """
    from ..concepts.vocab import list_templates, list_vocabs
    from ..options import FAITHFULNESS_NAMES, check_choice, check_concepts

    names = check_concepts(parse_lines(concepts))
    vocab = None if vocab in (None, "", MODEL_VOCAB) else vocab
    if vocab is not None and vocab not in list_vocabs():
        raise UsageError(f"unknown vocabulary {vocab!r}; shipped vocabularies: {', '.join(list_vocabs())}")
    templates = templates or None
    if templates is not None and templates not in list_templates():
        raise UsageError(f"unknown template set {templates!r}; shipped template sets: {', '.join(list_templates())}")
    faithfulness = FAITHFULNESS_NAMES[check_choice("faithfulness", faithfulness or "off", list(FAITHFULNESS_NAMES))]
    request = LabRequest(tuple(names), tuple(parse_lines(references)),
                         None if contrast in (None, "", DEFAULT_CONTRAST) else contrast, vocab, templates,
                         alpha, method, objective, base or None, bool(zoom), faithfulness)
    request_options(request)  # LocateOptions checks the rule, alpha, method, objective, base and zoom
    return request


def request_options(request: LabRequest) -> "LocateOptions":
    """The LocateOptions of a request (the Finer-CAM row of the page): the ONE place a lab
    request becomes locate's options. The parts rule uses the shipped `cub_parts`; method
    "base" shows the base alone in the Finer-CAM row too (alpha 0)."""
    from ..options import LocateOptions

    parts = "cub_parts" if request.contrast == "parts" else None
    return LocateOptions(vs=request.references or None, vocab=request.vocab, contrast=request.contrast,
                         parts=parts, alpha=0.0 if request.method == "base" else request.alpha,
                         method="finer" if request.method == "base" else request.method,
                         objective=request.objective, templates=request.templates, base=request.base,
                         zoom=request.zoom, faithfulness=request.faithfulness)


class FeatureCache:
    """ImageFeatures by content hash, least recently used dropped first, bounded by count and bytes.

    Sizes are measured when an entry is used (the Jacobian is added to features on first use).
    Shared by all sessions: features are deterministic, so one user's image never changes
    another's page.
    """

    def __init__(self, max_items: int = 16, max_bytes: int = 1 << 30):
        if max_items < 1 or max_bytes < 1:
            raise UsageError("the feature cache needs room for at least one image")
        self.max_items, self.max_bytes = max_items, max_bytes
        self._items: OrderedDict[str, ImageFeatures] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: str) -> "ImageFeatures | None":
        with self._lock:
            feats = self._items.get(key)
            if feats is not None:
                self._items.move_to_end(key)
            return feats

    def put(self, key: str, feats: "ImageFeatures") -> None:
        with self._lock:
            self._items[key] = feats
            self._items.move_to_end(key)
            self._trim()

    def trim(self) -> None:
        """Drop least recently used entries until both bounds hold (call after features grew)."""
        with self._lock:
            self._trim()

    @property
    def nbytes(self) -> int:
        return sum(features_nbytes(f) for f in list(self._items.values()))

    def _trim(self) -> None:
        while len(self._items) > self.max_items or (len(self._items) > 1 and self.nbytes > self.max_bytes):
            self._items.popitem(last=False)


def features_nbytes(feats: "ImageFeatures") -> int:
    """Bytes held by features: tensors (Jacobian and backend cache included), the images, and the zoom
    windows' features."""
    import torch

    matrix, record = feats.output_jacobian or (None, None)  # the record's projection weights are the model's
    per_image = [matrix, record.v, record.weights] if record is not None else []
    tensors = [feats.stream, feats.target, feats.embedding, feats.jacobian, *per_image, *feats.cache.values()]
    size = sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))
    windows = sum(features_nbytes(w) for w in feats.windows.values() if w is not feats)
    return size + sum(im.nbytes for im in feats.images) + windows


def image_key(loc: "Localizer", path: str | os.PathLike) -> str:
    """Cache key of an image file: the model and the sha256 of the file's bytes."""
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return f"{loc.model_key}:{digest}"


def features_for(loc: "Localizer", cache: FeatureCache, path: str | os.PathLike) -> tuple["ImageFeatures", bool]:
    """(features of the image file, whether they came from the cache); encodes and caches on a miss.

    Errors name the file by its name only (uploads live under server paths).
    """
    from ..errors import WorkError

    path = Path(path)
    if not path.is_file():
        raise UsageError("no image given; upload an image or pick an example")
    key = image_key(loc, path)
    feats = cache.get(key)
    if feats is not None:
        return feats, True
    try:
        feats = loc.encode_image(str(path))
    except (UsageError, WorkError) as err:
        raise type(err)(str(err).replace(str(path), path.name)) from None
    feats.sources[0] = path.name
    cache.put(key, feats)
    return feats, False


@dataclass
class LabResult:
    """What one request produced, ready for the page."""

    comparison: "Comparison"
    request: LabRequest
    cached: bool  # the image's features came from the cache (the trunk did not run)
    seconds: float  # server time for the request
    neighbours: dict[str, list[tuple[str, float]]]
    notice: str | None = None  # concepts or references the model cannot read (the toy), and what to use instead


def run_request(loc: "Localizer", cache: FeatureCache, image: str | os.PathLike, request: LabRequest) -> LabResult:
    """The CAM base alone and Finer-CAM of the request's concepts on the image, with its neighbours."""
    from ..concepts.text import vocabulary_notice

    start = time.perf_counter()
    feats, cached = features_for(loc, cache, image)
    comparison = loc.compare(feats, list(request.concepts), request_options(request))
    for res in (*comparison.base_alone, *comparison.finer):  # the cache is shared: the name is this upload's
        res.source = Path(image).name
    cache.trim()  # the Jacobian may have been added
    neighbours = {c: neighbours_of(loc, c, request) for c in request.concepts}
    notice = vocabulary_notice(loc.config.known_words, [*request.concepts, *request.references])
    return LabResult(comparison, request, cached, time.perf_counter() - start, neighbours, notice)


def neighbours_of(loc: "Localizer", concept: str, request: LabRequest) -> list[tuple[str, float]]:
    """The concept's nearest vocabulary entries by text; none when there is no vocabulary to search."""
    if request.vocab is None and not loc.config.default_vocab:
        return []
    return loc.neighbors(concept, request.vocab, NEIGHBOURS, templates=request.templates)


# layout --------------------------------------------------------------------
def score_rows(result: LabResult) -> list[list]:
    """Rows [concept, entry, role, logit, probability, faithfulness]: each concept then its references;
    the probability is a softmax over the concept and its references (`LocateResult.probabilities`);
    the faithfulness of the concept's Finer-CAM map ("" for references, when not asked for, and "-"
    for an empty map)."""
    rows = []
    for res in result.comparison.finer:
        for i, (name, p) in enumerate(res.probabilities().items()):
            rows.append([res.concept, name, "concept" if i == 0 else "reference",
                         round(res.scores[name], 4), round(p, 4), res.faithfulness_text if i == 0 else ""])
    return rows


SCORE_HEADERS = ["concept", "entry", "role", "logit", "p vs refs", "faithfulness"]  # p: over concept + references


def gallery(result: LabResult, cell: int = CELL) -> list[tuple[Any, str]]:
    """(RGB array, caption) per map: for each concept the base alone, Finer-CAM and their difference."""
    comp, items = result.comparison, []
    for i, concept in enumerate(comp.concepts):
        items += [(im, f"{concept} · {row}") for im, row in zip(comp.cells(i, cell), comp.rows)]
    return items


def references_text(result: LabResult) -> str:
    """Markdown: per concept the references used and the rule that chose them."""
    lines = ["References used, and the rule that chose them:"]
    for res in result.comparison.finer:
        refs = ", ".join(res.references) or "none"
        lines.append(f"- **{res.concept}** vs {refs}; rule *{res.contrast}*: {RULES.get(res.contrast, '')}")
    return "\n".join(lines)


def neighbours_text(result: LabResult) -> str:
    """Markdown: per concept its nearest vocabulary entries by text."""
    if not any(result.neighbours.values()):
        return "No vocabulary to search: pick one."
    where = result.request.vocab or MODEL_VOCAB
    lines = [f"Nearest in *{where}* by text:"]
    for concept, near in result.neighbours.items():
        lines.append(f"- **{concept}**: " + ", ".join(f"{n} ({s:.3f})" for n, s in near))
    return "\n".join(lines)


def status_text(result: LabResult, image_size: tuple[int, int]) -> str:
    """One line: server time and whether the trunk ran; then the notice, if any, on its own line."""
    trunk = ("cached image: the trunk did not run" if result.cached
             else f"new image: the trunk ran at {image_size[1]} x {image_size[0]}")
    line = f"{len(result.request.concepts)} concept(s) in {1000 * result.seconds:.0f} ms; {trunk}."
    return line if result.notice is None else f"{line}\n\n**Note:** {result.notice}."


def summary(result: LabResult) -> dict:
    """The JSON the API returns: to_dict() of each Finer-CAM result (arrays left out), the
    base-alone map's peak and box (`location`; None for an empty map), and whether the features
    were cached."""
    out = []
    for alone, finer in zip(result.comparison.base_alone, result.comparison.finer):
        record = {k: v for k, v in finer.to_dict().items() if k != "token_map"}
        record["base_alone"] = alone.location()
        if alone.faithfulness is not None:
            record["base_alone"]["faithfulness"] = alone.faithfulness.to_dict()
        out.append(record)
    return {"cached": result.cached, "seconds": round(result.seconds, 6), "results": out}


def write_downloads(result: LabResult, folder: str | os.PathLike) -> list[str]:
    """Overlay PNGs, heatmaps (.npy) and JSON of every concept (files replaced in `folder`),
    plus the whole compare grid; returns the paths."""
    from ..io.files import atomic_write, json_bytes

    folder = Path(folder)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    paths = []
    for res in result.comparison.finer:
        paths += res.save(folder).values()  # the one naming rule (`LocateResult.default_stem`)
    grid = folder / "compare_grid.png"
    atomic_write(grid, lambda f: result.comparison.grid().save(f, format="PNG"))
    summary_path = folder / "results.json"
    atomic_write(summary_path, lambda f: f.write(json_bytes(summary(result), indent=1)))
    return [*map(str, paths), str(grid), str(summary_path)]


def new_download_folder() -> str:
    """A private folder for one browser session's downloads."""
    return tempfile.mkdtemp(prefix="zsfinercam-lab-")
